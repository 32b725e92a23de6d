// The SIMT emulator's controls, as ops of the test build (torch.ops.detloss_emu.*; the build
// itself: tests/emulated_cuda.py): the kernels it can run and how often each ran, the seed of
// its schedules, its counters.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "emu.h"

namespace {

std::tuple<std::vector<std::string>, std::vector<std::string>, std::vector<int64_t>> kernels() {
  std::vector<std::string> symbols, names;
  std::vector<int64_t> launches;
  for (const detloss_emu::KernelInfo& k : detloss_emu::kernels()) {
    symbols.push_back(k.tag);
    names.push_back(k.name);
    launches.push_back(k.launches);
  }
  return {symbols, names, launches};
}

void set_seed(int64_t seed) { detloss_emu::set_seed(static_cast<uint64_t>(seed)); }

std::vector<int64_t> counters() {
  const detloss_emu::Counters c = detloss_emu::counters();
  return {c.launches, c.blocks, c.threads, c.barriers, c.switches};
}

int64_t shared_bytes() { return detloss_emu::shared_bytes(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(detloss_emu, m) {
  m.def("emu_kernels() -> (str[] tags, str[] names, int[] launches)", &kernels);
  m.def("emu_set_seed(int seed) -> ()", &set_seed);
  m.def("emu_counters() -> int[]", &counters);  // launches, blocks, threads, barriers, switches
  m.def("emu_shared_bytes() -> int", &shared_bytes);
}
