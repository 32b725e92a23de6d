// The SIMT emulator's internal state, shared by its translation units (not part of the
// model the kernels see: that is simt.h): the fibers (fiber.cpp), the fault handler
// (fault.cpp), the warp collectives' rules (warp.cpp) and the scheduler (simt.cpp).
#pragma once

#include <pthread.h>

#include <csignal>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "emu.h"
#include "simt.h"

// Fibers switch by a few instructions of assembly on x86-64, by swapcontext elsewhere (or
// where DETLOSS_EMU_UCONTEXT asks: tests/emulated_cuda.py's DETLOSS_EMU_UCONTEXT=1).
#if defined(__x86_64__) && !defined(DETLOSS_EMU_UCONTEXT)
#define DETLOSS_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace detloss_emu {
namespace detail {

constexpr size_t kStack = 256 * 1024;
constexpr size_t kGuard = 4096;  // below each stack: an overflow faults instead of corrupting

enum class State { kReady, kBarrier, kWarp, kExited };

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

  Fiber();  // a stack of its own (mmap), a guard page below it
  ~Fiber();
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  // A fresh start at fiber_entry; also how a fiber that a failed launch abandoned inside a
  // kernel is reclaimed (its frames are dropped: device code holds nothing to destroy).
  void restart();
};

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

Emulator& emu();

struct LaunchFailed {
  std::string what;
};

// Raises a failed launch: what, with the kernel, block and grid.
[[noreturn]] void fail(const Emulator& e, const std::string& what);
// Runs thread tid of the block until it yields (scheduler side), then raises what it found.
void resume(Emulator& e, int tid);
// Back to the scheduler (fiber side).
void yield(Emulator& e, Fiber* f);

// For the duration of a launch: on_fault (fault.cpp), on an alternate stack of this thread.
class FaultGuard {
 public:
  explicit FaultGuard(Emulator& e);
  ~FaultGuard();
  FaultGuard(const FaultGuard&) = delete;
  FaultGuard& operator=(const FaultGuard&) = delete;

 private:
  Emulator& e_;
  stack_t old_stack_{};
  alignas(16) static inline char alt_[64 * 1024];
};

// The warp collectives (warp.cpp): completes those of warp w that can complete; explains one
// that never can.
bool complete_collectives(Emulator& e, int w);
[[noreturn]] void deadlock(Emulator& e, int t);
const char* collective_name(Collective k);
std::string site(const Fiber& f);

}  // namespace detail
}  // namespace detloss_emu
