// The SIMT emulator's scheduler (the model: csrc/emu/simt.h). One host thread runs a launch,
// block by block; a block's threads are fibers with stacks of their own, switched by a few
// instructions of assembly on x86-64 (swapcontext elsewhere: a system call per switch).
#include "simt.h"

#include <c10/util/Exception.h>
#include <cxxabi.h>
#include <pthread.h>
#include <sys/mman.h>

#include <csignal>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "emu.h"

// Fibers switch by a few instructions of assembly on x86-64, by swapcontext elsewhere (or
// where DETLOSS_EMU_UCONTEXT asks: tests/emulated_cuda.py's DETLOSS_EMU_UCONTEXT=1).
#if defined(__x86_64__) && !defined(DETLOSS_EMU_UCONTEXT)
#define DETLOSS_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

// csrc/emu/shared.ld gathers the function-local statics of namespace detloss::cuda (what
// __shared__ declares there: device code has no other statics) between these two symbols.
extern "C" char __start_detloss_emu_shared[] __attribute__((weak));
extern "C" char __stop_detloss_emu_shared[] __attribute__((weak));

namespace detloss_emu {

uint3 g_thread_idx{0, 0, 0}, g_block_idx{0, 0, 0};
dim3 g_block_dim, g_grid_dim;

namespace {

// ------------------------------------------------------------------------------- fibers
constexpr size_t kStack = 256 * 1024;
constexpr size_t kGuard = 4096;  // below each stack: an overflow faults instead of corrupting

#if defined(DETLOSS_EMU_ASM_SWITCH)
// detloss_emu_switch(&save, next): pushes the callee-saved registers, saves the stack pointer
// in *save, loads `next` and pops that context's registers; `ret` resumes it. A new fiber's
// stack is laid out as if it had switched away just before detloss_emu_fiber_start, which
// calls r12(rbx): fiber_entry(fiber).
extern "C" void detloss_emu_switch(void** save, void* next);
extern "C" void detloss_emu_fiber_start();
asm(R"(
  .text
  .p2align 4
  .type detloss_emu_switch, @function
detloss_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size detloss_emu_switch, .-detloss_emu_switch
  .p2align 4
  .type detloss_emu_fiber_start, @function
detloss_emu_fiber_start:
  movq %rbx, %rdi
  andq $-16, %rsp
  call *%r12
  ud2
  .size detloss_emu_fiber_start, .-detloss_emu_fiber_start
)");
#endif

enum class State { kReady, kBarrier, kWarp, kExited };

struct Fiber;
void fiber_entry(Fiber* f);
#if !defined(DETLOSS_EMU_ASM_SWITCH)
void fiber_start_halves(unsigned hi, unsigned lo) {
  const uint64_t p = (static_cast<uint64_t>(hi) << 32) | lo;
  fiber_entry(reinterpret_cast<Fiber*>(static_cast<uintptr_t>(p)));
}
#endif

struct Fiber {
  char* mem = nullptr;  // guard page, then the stack
#if defined(DETLOSS_EMU_ASM_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  // where the thread is: ready to run, at a barrier, in a warp collective (its part of it
  // below), or exited
  State state = State::kExited;
  Collective kind = Collective::kSyncWarp;
  unsigned mask = 0;
  uint64_t value = 0;
  int operand = 0, width = 32;
  const char* file = "";
  int line = 0;
  uint64_t result = 0;

  Fiber() {
    void* m = mmap(nullptr, kStack + kGuard, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    TORCH_CHECK(m != MAP_FAILED, "SIMT emulator: cannot map a fiber stack");
    mem = static_cast<char*>(m);
    mprotect(mem, kGuard, PROT_NONE);
    restart();
  }
  ~Fiber() { munmap(mem, kStack + kGuard); }
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  // A fresh start at fiber_entry; also how a fiber that a failed launch abandoned inside a
  // kernel is reclaimed (its frames are dropped: device code holds nothing to destroy).
  void restart() {
#if defined(DETLOSS_EMU_ASM_SWITCH)
    uintptr_t* top = reinterpret_cast<uintptr_t*>(
        reinterpret_cast<uintptr_t>(mem + kGuard + kStack) & ~uintptr_t(15));
    *--top = 0;                                                       // (alignment)
    *--top = reinterpret_cast<uintptr_t>(&detloss_emu_fiber_start);  // where `ret` goes
    *--top = 0;                                                       // rbp
    *--top = reinterpret_cast<uintptr_t>(this);                       // rbx: the argument
    *--top = reinterpret_cast<uintptr_t>(&fiber_entry);               // r12: the function
    *--top = 0;                                                       // r13
    *--top = 0;                                                       // r14
    *--top = 0;                                                       // r15
    sp = top;
#else
    getcontext(&ctx);
    ctx.uc_stack.ss_sp = mem + kGuard;
    ctx.uc_stack.ss_size = kStack;
    ctx.uc_link = nullptr;
    // (makecontext passes int arguments: the pointer goes in two halves)
    const uint64_t p = reinterpret_cast<uintptr_t>(this);
    makecontext(&ctx, reinterpret_cast<void (*)()>(&fiber_start_halves), 2,
                static_cast<unsigned>(p >> 32), static_cast<unsigned>(p & 0xffffffffu));
#endif
  }
};

// ------------------------------------------------------------------------ the state
struct KernelRecord {
  std::string tag;   // KernelTag<&kernel>'s type name, mangled: unique
  std::string name;  // the kernel's signature, demangled
  int64_t launches = 0;
};

struct Emulator {
  std::mutex mu;  // one launch at a time: the fibers and everything below are shared
  std::vector<KernelRecord> kernels;
  std::vector<std::unique_ptr<Fiber>> fibers;
#if defined(DETLOSS_EMU_ASM_SWITCH)
  void* sched_sp = nullptr;
#else
  ucontext_t sched_ctx;
#endif
  Fiber* current = nullptr;
  Thunk thunk = nullptr;
  const void* closure = nullptr;
  int kernel = -1;
  std::vector<Fiber*> th;  // the block's threads
  std::string fiber_error;  // an error found on a fiber's stack, raised by the scheduler
  // a kernel thread's invalid memory access, caught by on_fault
  pthread_t launcher{};
  bool faulted = false;
  int fault_signal = 0;
  void* fault_address = nullptr;
  uint3 fault_thread{0, 0, 0};
  struct sigaction old_segv {}, old_bus {};
  uint64_t seed = 0;
  Counters counters;
};

Emulator& emu() {
  static Emulator* e = new Emulator();  // never destroyed: no teardown order to get wrong
  return *e;
}

std::string demangle(const std::string& m) {
  int status = 0;
  char* d = abi::__cxa_demangle(m.c_str(), nullptr, nullptr, &status);
  std::string s = status == 0 && d != nullptr ? d : m;
  std::free(d);
  return s;
}

struct LaunchFailed {
  std::string what;
};

[[noreturn]] void fail(const Emulator& e, const std::string& what) {
  throw LaunchFailed{"SIMT emulator: " + what + " (kernel " + e.kernels[e.kernel].name +
                     ", block (" + std::to_string(g_block_idx.x) + ", " +
                     std::to_string(g_block_idx.y) + ", " + std::to_string(g_block_idx.z) +
                     ") of a grid of (" + std::to_string(g_grid_dim.x) + ", " +
                     std::to_string(g_grid_dim.y) + ", " + std::to_string(g_grid_dim.z) +
                     "), " + std::to_string(e.th.size()) + " threads a block)"};
}

void resume(Emulator& e, int tid) {
  Fiber* f = e.th[tid];
  f->state = State::kReady;
  const unsigned t = static_cast<unsigned>(tid);
  g_thread_idx = {t % g_block_dim.x, t / g_block_dim.x % g_block_dim.y,
                  t / (g_block_dim.x * g_block_dim.y)};
  e.current = f;
  ++e.counters.switches;
#if defined(DETLOSS_EMU_ASM_SWITCH)
  detloss_emu_switch(&e.sched_sp, f->sp);
#else
  swapcontext(&e.sched_ctx, &f->ctx);
#endif
  e.current = nullptr;
  if (e.faulted) {
    e.faulted = false;
    char where[64];
    std::snprintf(where, sizeof(where), "%p", e.fault_address);
    fail(e, std::string("invalid memory access (") + (e.fault_signal == SIGBUS ? "SIGBUS" : "SIGSEGV") +
                " at address " + where + ") by thread (" + std::to_string(e.fault_thread.x) + ", " +
                std::to_string(e.fault_thread.y) + ", " + std::to_string(e.fault_thread.z) + ")");
  }
  if (!e.fiber_error.empty()) {
    std::string what = std::move(e.fiber_error);
    e.fiber_error.clear();
    fail(e, what);
  }
}

void yield(Emulator& e, Fiber* f) {
#if defined(DETLOSS_EMU_ASM_SWITCH)
  detloss_emu_switch(&f->sp, e.sched_sp);
#else
  swapcontext(&f->ctx, &e.sched_ctx);
#endif
}

void fiber_entry(Fiber* f) {
  Emulator& e = emu();
  for (;;) {
    e.thunk(e.closure);
    f->state = State::kExited;
    yield(e, f);
  }
}

// SIGSEGV / SIGBUS in a kernel thread (an access that leaves mapped memory, or a fiber's
// stack overflowing into its guard page): recorded, and the fiber abandoned for the scheduler,
// which raises it as an error naming the kernel, block and thread. Any other fault goes to the
// handler that was there before. (An access that stays inside mapped memory is not seen: the
// GPU's compute-sanitizer run covers those.)
void on_fault(int sig, siginfo_t* info, void* uctx) {
  Emulator& e = emu();
  Fiber* f = e.current;
  if (f == nullptr || !pthread_equal(pthread_self(), e.launcher)) {
    const struct sigaction& old = sig == SIGBUS ? e.old_bus : e.old_segv;
    if ((old.sa_flags & SA_SIGINFO) != 0 && old.sa_sigaction != nullptr) {
      old.sa_sigaction(sig, info, uctx);
    } else if (old.sa_handler != SIG_DFL && old.sa_handler != SIG_IGN) {
      old.sa_handler(sig);
    } else {
      signal(sig, SIG_DFL);
      raise(sig);
    }
    return;
  }
  e.faulted = true;
  e.fault_signal = sig;
  e.fault_address = info->si_addr;
  e.fault_thread = g_thread_idx;
  f->state = State::kExited;
  yield(e, f);  // never resumed: the failed launch restarts its fibers
}

// For the duration of a launch: on_fault, on an alternate stack of this thread.
class FaultGuard {
 public:
  explicit FaultGuard(Emulator& e) : e_(e) {
    e.launcher = pthread_self();
    stack_t ss{};
    ss.ss_sp = alt_;
    ss.ss_size = sizeof(alt_);
    sigaltstack(&ss, &old_stack_);
    struct sigaction sa {};
    sa.sa_sigaction = &on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;  // (left by a switch, not a return)
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &e.old_segv);
    sigaction(SIGBUS, &sa, &e.old_bus);
  }
  ~FaultGuard() {
    sigaction(SIGSEGV, &e_.old_segv, nullptr);
    sigaction(SIGBUS, &e_.old_bus, nullptr);
    sigaltstack(&old_stack_, nullptr);
  }
  FaultGuard(const FaultGuard&) = delete;
  FaultGuard& operator=(const FaultGuard&) = delete;

 private:
  Emulator& e_;
  stack_t old_stack_{};
  alignas(16) static inline char alt_[64 * 1024];
};

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
}

std::string site(const Fiber& f) { return std::string(f.file) + ":" + std::to_string(f.line); }

const char* collective_name(Collective k) {
  switch (k) {
    case Collective::kShflDown: return "__shfl_down_sync";
    case Collective::kShflUp: return "__shfl_up_sync";
    case Collective::kShflXor: return "__shfl_xor_sync";
    case Collective::kShflIdx: return "__shfl_sync";
    case Collective::kBallot: return "__ballot_sync";
    default: return "__syncwarp";
  }
}

std::string describe(const Fiber& f) {
  return std::string(collective_name(f.kind)) + " at " + site(f);
}

// The lane whose value a shuffle hands to `lane`, by CUDA's rules: the warp is cut into
// segments of `width` lanes; down/xor reaching past the segment's end, or up before its
// start, give the caller its own value.
int source_lane(Collective k, int lane, int operand, int width) {
  const int base = lane & ~(width - 1);
  switch (k) {
    case Collective::kShflDown: {
      const int s = lane + operand;
      return s < base + width ? s : lane;
    }
    case Collective::kShflUp: {
      const int s = lane - operand;
      return s >= base ? s : lane;
    }
    case Collective::kShflXor: {
      const int s = lane ^ operand;
      return s < base + width ? s : lane;
    }
    case Collective::kShflIdx: return base + (operand & (width - 1));
    default: return lane;
  }
}

// Completes every collective of warp w that can complete, by the rules of sm_70 and later
// (every architecture this project builds for): a collective waits for the lanes its mask
// names that have not exited to reach one of the same kind, mask and width (at any place in
// the code); collectives of disjoint masks proceed independently. Reading a lane that does not
// take part (outside the mask, or exited) is undefined on a GPU: an error here.
bool complete_collectives(Emulator& e, int w) {
  const int n = static_cast<int>(e.th.size());
  bool any = false;
  unsigned seen = 0;  // lanes of collectives already looked at in this pass
  for (int l = 0; l < 32 && w * 32 + l < n; ++l) {
    Fiber& f = *e.th[w * 32 + l];
    if (f.state != State::kWarp || (seen >> l & 1u)) continue;
    const unsigned mask = f.mask;
    if (!(mask >> l & 1u))
      fail(e, "lane " + std::to_string(l) + " of warp " + std::to_string(w) + " calls " +
                  describe(f) + " with a mask (" + hex(mask) + ") that does not name it");
    bool ready = true;
    for (unsigned bits = mask; bits != 0; bits &= bits - 1) {
      const int j = __builtin_ctz(bits);
      if (w * 32 + j >= n)
        fail(e, describe(f) + " names lane " + std::to_string(j) + " of warp " +
                    std::to_string(w) + ", which does not exist (mask " + hex(mask) + ")");
      const Fiber& g = *e.th[w * 32 + j];
      if (g.state == State::kWarp && g.kind == f.kind && g.mask == mask && g.width == f.width)
        seen |= 1u << j;  // the same collective: the same answer
      else if (g.state != State::kExited)
        ready = false;
    }
    if (!ready) continue;
    uint64_t ballot = 0;
    for (unsigned bits = mask; bits != 0; bits &= bits - 1) {
      const int j = __builtin_ctz(bits);
      const Fiber& g = *e.th[w * 32 + j];
      if (g.state == State::kWarp && g.value != 0) ballot |= uint64_t(1) << j;
    }
    for (unsigned bits = mask; bits != 0; bits &= bits - 1) {
      const int j = __builtin_ctz(bits);
      if (e.th[w * 32 + j]->state != State::kWarp) continue;
      Fiber& g = *e.th[w * 32 + j];
      if (f.kind == Collective::kBallot) {
        g.result = ballot;
      } else if (f.kind != Collective::kSyncWarp) {
        const int src = source_lane(f.kind, j, g.operand, f.width);
        const bool outside = !(mask >> src & 1u);
        if (outside || e.th[w * 32 + src]->state != State::kWarp)
          fail(e, "lane " + std::to_string(j) + " of warp " + std::to_string(w) + " reads lane " +
                      std::to_string(src) + " in " + describe(g) +
                      (outside ? ", outside the mask " + hex(mask) : std::string(", which has exited")) +
                      " (undefined on a GPU)");
        g.result = e.th[w * 32 + src]->value;
      }
    }
    for (unsigned bits = mask; bits != 0; bits &= bits - 1) {
      Fiber& g = *e.th[w * 32 + __builtin_ctz(bits)];
      if (g.state == State::kWarp) g.state = State::kReady;
    }
    any = true;
  }
  return any;
}

// Why a collective that nothing can complete any more waits: a lane of its mask is at a
// barrier, or at a collective of another kind, mask or width.
[[noreturn]] void deadlock(Emulator& e, int t) {
  const Fiber& f = *e.th[t];
  const int w = t / 32;
  for (int j = 0; j < 32; ++j) {
    if (!(f.mask >> j & 1u)) continue;
    const Fiber& g = *e.th[w * 32 + j];
    const std::string who = "lane " + std::to_string(j) + " of warp " + std::to_string(w);
    if (g.state == State::kBarrier)
      fail(e, describe(f) + " (mask " + hex(f.mask) + ") waits for " + who +
                  ", which waits at __syncthreads at " + site(g) + ": a deadlock");
    if (g.state == State::kWarp && (g.kind != f.kind || g.mask != f.mask || g.width != f.width))
      fail(e, "the lanes of a collective disagree: lane " + std::to_string(t % 32) + " calls " +
                  describe(f) + " (mask " + hex(f.mask) + ", width " + std::to_string(f.width) +
                  "), " + who + " calls " + describe(g) + " (mask " + hex(g.mask) + ", width " +
                  std::to_string(g.width) + "): a deadlock");
  }
  fail(e, describe(f) + " can never complete");
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

uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int operand, int width,
                         const char* file, int line) {
  Emulator& e = emu();
  Fiber* f = e.current;
  TORCH_CHECK(f != nullptr, "SIMT emulator: a warp collective outside a kernel");
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    // (nothing may throw on a fiber's stack: the scheduler raises it)
    e.fiber_error = std::string(collective_name(kind)) + " at " + file + ":" +
                    std::to_string(line) + " with width " + std::to_string(width) +
                    " (a power of 2 up to 32)";
    f->state = State::kExited;
    yield(e, f);
  }
  f->state = State::kWarp;
  f->kind = kind;
  f->mask = mask;
  f->value = value;
  f->operand = operand;
  f->width = width;
  f->file = file;
  f->line = line;
  yield(e, f);
  return f->result;
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
