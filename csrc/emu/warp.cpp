// The SIMT emulator's warp collectives: shuffles, ballot and __syncwarp by CUDA's rules
// (sm_70 and later), and the errors a GPU would leave undefined.
#include <c10/util/Exception.h>

#include <cstdio>

#include "state.h"

namespace detloss_emu {
namespace detail {
namespace {

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "0x%08x", v);
  return buf;
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

}  // namespace

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

}  // namespace detail

// (called by the kernels' shuffles, ballots and __syncwarp: simt.h)
uint64_t warp_collective(Collective kind, unsigned mask, uint64_t value, int operand, int width,
                         const char* file, int line) {
  using namespace detail;  // NOLINT
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

}  // namespace detloss_emu
