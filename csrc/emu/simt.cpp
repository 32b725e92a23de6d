// The SIMT emulator's scheduler (the model: csrc/emu/simt.h): one host thread runs a launch,
// block by block, in a seeded random order; a block's warps and lanes run in a random order
// too, each thread a fiber (fiber.cpp) switched at every barrier and warp collective
// (warp.cpp); shared memory is poisoned before every block.
#include <c10/util/Exception.h>
#include <cxxabi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>

#include "emu.h"
#include "state.h"

// csrc/emu/shared.ld gathers the function-local statics of namespace detloss::cuda (what
// __shared__ declares there: device code has no other statics) between these two symbols.
extern "C" char __start_detloss_emu_shared[] __attribute__((weak));
extern "C" char __stop_detloss_emu_shared[] __attribute__((weak));

namespace detloss_emu {

uint3 g_thread_idx{0, 0, 0}, g_block_idx{0, 0, 0};
dim3 g_block_dim, g_grid_dim;

namespace {

using namespace detail;  // NOLINT

std::string demangle(const std::string& m) {
  int status = 0;
  char* d = abi::__cxa_demangle(m.c_str(), nullptr, nullptr, &status);
  std::string s = status == 0 && d != nullptr ? d : m;
  std::free(d);
  return s;
}

// Runs warp w until each of its lanes waits at a barrier or has exited.
void run_warp(Emulator& e, int w, const std::vector<int>& lane_order) {
  const int n = static_cast<int>(e.th.size());
  for (;;) {
    bool progress = false;
    for (int l : lane_order) {
      const int t = w * 32 + l;
      if (t < n && e.th[t]->state == State::kReady) {
        resume(e, t);
        progress = true;
      }
    }
    progress = complete_collectives(e, w) || progress;
    if (!progress) return;
  }
}

void run_block(Emulator& e, std::mt19937_64& rng) {
  const int n = static_cast<int>(e.th.size());
  if (shared_bytes() > 0)
    std::memset(__start_detloss_emu_shared, 0xFF, static_cast<size_t>(shared_bytes()));
  for (Fiber* f : e.th) f->state = State::kReady;
  const int warps = (n + 31) / 32;
  std::vector<int> warp_order(warps), lane_order(32);
  std::iota(warp_order.begin(), warp_order.end(), 0);
  std::iota(lane_order.begin(), lane_order.end(), 0);
  std::shuffle(warp_order.begin(), warp_order.end(), rng);
  std::shuffle(lane_order.begin(), lane_order.end(), rng);
  for (;;) {
    for (int w : warp_order) run_warp(e, w, lane_order);
    // every thread waits at a barrier, in a collective that cannot complete, or has exited
    for (int t = 0; t < n; ++t)
      if (e.th[t]->state == State::kWarp) deadlock(e, t);
    const Fiber* first = nullptr;
    for (const Fiber* f : e.th) {
      if (f->state == State::kExited) continue;
      if (first == nullptr) {
        first = f;
      } else if (f->line != first->line || std::strcmp(f->file, first->file) != 0) {
        fail(e, "__syncthreads reached from two places, " + site(*first) + " and " + site(*f) +
                    ": a barrier in divergent code (undefined on a GPU)");
      }
    }
    if (first == nullptr) return;  // all exited
    ++e.counters.barriers;
    for (Fiber* f : e.th)
      if (f->state == State::kBarrier) f->state = State::kReady;
  }
}

}  // namespace

// ------------------------------------------------------------- what the kernels call
void barrier(const char* file, int line) {
  Emulator& e = emu();
  Fiber* f = e.current;
  TORCH_CHECK(f != nullptr, "SIMT emulator: __syncthreads outside a kernel");
  f->state = State::kBarrier;
  f->file = file;
  f->line = line;
  yield(e, f);
}

int register_kernel(const char* tag_name) {
  Emulator& e = emu();
  // KernelTag<&kernel>, demangled: "detloss_emu::KernelTag<&(<signature>)>" for a template's
  // instantiation, "detloss_emu::KernelTag<&<qualified name>>" for a plain function
  std::string name = demangle(tag_name);
  const std::string head = "detloss_emu::KernelTag<&";
  if (name.compare(0, head.size(), head) == 0 && name.back() == '>') {
    name = name.substr(head.size(), name.size() - head.size() - 1);
    if (name.size() > 2 && name.front() == '(' && name.back() == ')')
      name = name.substr(1, name.size() - 2);
  }
  e.kernels.push_back({tag_name, name, 0});
  return static_cast<int>(e.kernels.size()) - 1;
}

void run_grid(int kernel, dim3 grid, dim3 block, Thunk thunk, const void* closure) {
  Emulator& e = emu();
  const std::lock_guard<std::mutex> lock(e.mu);
  const int64_t threads = int64_t(block.x) * block.y * block.z;
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  TORCH_CHECK(threads >= 1 && threads <= 1024 && blocks >= 1 && grid.y <= 65535 &&
                  grid.z <= 65535,
              "SIMT emulator: invalid launch configuration of ", e.kernels[kernel].name,
              ": grid (", grid.x, ", ", grid.y, ", ", grid.z, "), block (", block.x, ", ",
              block.y, ", ", block.z, ")");
  e.kernels[kernel].launches++;
  e.counters.launches++;
  e.kernel = kernel;
  e.thunk = thunk;
  e.closure = closure;
  g_grid_dim = grid;
  g_block_dim = block;
  while (static_cast<int64_t>(e.fibers.size()) < threads) e.fibers.push_back(std::make_unique<Fiber>());
  e.th.assign(threads, nullptr);
  for (int64_t t = 0; t < threads; ++t) e.th[t] = e.fibers[t].get();

  // the schedule: blocks in a seeded random order (each launch its own)
  std::mt19937_64 rng(e.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(e.counters.launches));
  std::vector<uint32_t> order(blocks);
  std::iota(order.begin(), order.end(), 0u);
  std::shuffle(order.begin(), order.end(), rng);
  const FaultGuard guard(e);
  try {
    for (const uint32_t b : order) {
      g_block_idx = {b % grid.x, b / grid.x % grid.y, b / (grid.x * grid.y)};
      run_block(e, rng);
      e.counters.blocks++;
      e.counters.threads += threads;
    }
  } catch (const LaunchFailed& err) {
    for (Fiber* f : e.th) {
      f->restart();
      f->state = State::kExited;
    }
    TORCH_CHECK(false, err.what);
  }
}

// ------------------------------------------------------------- for the test module
std::vector<KernelInfo> kernels() {
  Emulator& e = emu();
  const std::lock_guard<std::mutex> lock(e.mu);
  std::vector<KernelInfo> out;
  for (const KernelRecord& k : e.kernels) out.push_back({k.tag, k.name, k.launches});
  return out;
}

void set_seed(uint64_t seed) {
  Emulator& e = emu();
  const std::lock_guard<std::mutex> lock(e.mu);
  e.seed = seed;
}

Counters counters() {
  Emulator& e = emu();
  const std::lock_guard<std::mutex> lock(e.mu);
  return e.counters;
}

int64_t shared_bytes() {
  if (__start_detloss_emu_shared == nullptr || __stop_detloss_emu_shared == nullptr) return 0;
  return __stop_detloss_emu_shared - __start_detloss_emu_shared;
}

}  // namespace detloss_emu
