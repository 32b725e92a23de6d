// The SIMT emulator's fault handler: an invalid memory access by a kernel thread becomes an
// error naming the kernel, block and thread, not a crash of the process.
#include "state.h"

namespace detloss_emu {
namespace detail {
namespace {

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

}  // namespace

FaultGuard::FaultGuard(Emulator& e) : e_(e) {
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
FaultGuard::~FaultGuard() {
  sigaction(SIGSEGV, &e_.old_segv, nullptr);
  sigaction(SIGBUS, &e_.old_bus, nullptr);
  sigaltstack(&old_stack_, nullptr);
}

}  // namespace detail
}  // namespace detloss_emu
