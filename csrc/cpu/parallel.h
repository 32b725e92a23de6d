// Deterministic chunked loops over [0, n) for the CPU kernels of every family.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace detloss {
namespace cpu {

// Units per partial sum. Fixed, so the order of the additions (and the result) does not
// depend on the number of threads.
constexpr int64_t kChunk = int64_t(1) << 15;

// Calls f(begin, end) over [0, n) in parallel.
template <typename F>
void chunked_for(int64_t n, int64_t grain, const F& f) {
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { f(b, e); });
}

// Sum over [0, n) of f(begin, end) -> acc_t, each call covering one fixed chunk, the chunk
// sums added in order.
template <typename acc_t, typename F>
acc_t chunked_sum(int64_t n, int64_t chunk, const F& f) {
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::vector<acc_t> partial(static_cast<size_t>(chunks), acc_t(0));
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) partial[c] = f(c * chunk, std::min(n, (c + 1) * chunk));
  });
  acc_t s(0);
  for (const acc_t v : partial) s += v;
  return s;
}

}  // namespace cpu
}  // namespace detloss
