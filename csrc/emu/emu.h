// What the SIMT emulator tells its test module (csrc/emu/module.cpp): the kernels it can run
// and how often each ran, the schedule's seed, counters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace detloss_emu {

struct KernelInfo {
  std::string tag;   // unique: the mangled name of KernelTag<&kernel>
  std::string name;  // the kernel's signature, demangled
  int64_t launches;
};

struct Counters {
  int64_t launches = 0, blocks = 0, threads = 0, barriers = 0, switches = 0;
};

// Every kernel instantiation compiled into the emulated build, in registration order.
std::vector<KernelInfo> kernels();
// The seed of the schedules (block order, warp and lane order in each block) of later launches.
void set_seed(uint64_t seed);
Counters counters();
// Bytes of __shared__ memory poisoned before every block (0: the linker script was not applied).
int64_t shared_bytes();

}  // namespace detloss_emu
