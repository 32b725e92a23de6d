// The SIMT emulator's fibers: a block's threads, each with a stack of its own, switched by a
// few instructions of assembly on x86-64 (swapcontext elsewhere: a system call per switch).
#include <c10/util/Exception.h>
#include <sys/mman.h>

#include <cstdio>

#include "state.h"

namespace detloss_emu {
namespace detail {

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

void fiber_entry(Fiber* f);
#if !defined(DETLOSS_EMU_ASM_SWITCH)
void fiber_start_halves(unsigned hi, unsigned lo) {
  const uint64_t p = (static_cast<uint64_t>(hi) << 32) | lo;
  fiber_entry(reinterpret_cast<Fiber*>(static_cast<uintptr_t>(p)));
}
#endif

Fiber::Fiber() {
  void* m = mmap(nullptr, kStack + kGuard, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  TORCH_CHECK(m != MAP_FAILED, "SIMT emulator: cannot map a fiber stack");
  mem = static_cast<char*>(m);
  mprotect(mem, kGuard, PROT_NONE);
  restart();
}
Fiber::~Fiber() { munmap(mem, kStack + kGuard); }

void Fiber::restart() {
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

Emulator& emu() {
  static Emulator* e = new Emulator();  // never destroyed: no teardown order to get wrong
  return *e;
}

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

}  // namespace detail
}  // namespace detloss_emu
