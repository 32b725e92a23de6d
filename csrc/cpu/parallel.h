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
// sums added in order, in double (thousands of chunk sums for 1e8 elements).
template <typename acc_t, typename F>
acc_t chunked_sum(int64_t n, int64_t chunk, const F& f) {
  const int64_t chunks = (n + chunk - 1) / chunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) partial[c] = f(c * chunk, std::min(n, (c + 1) * chunk));
  });
  double s = 0;
  for (const double v : partial) s += v;
  return static_cast<acc_t>(s);
}

// A forward over [0, n) whose range function writes per-unit results itself (reduction
// 'none') or returns the sum of its range: with `reduce`, the deterministic sum, divided by
// `mean_divisor` when that is >= 0 ('mean'; 0 for a divisor of 0: the mean of nothing), is
// written to *result.
template <typename scalar_t, typename acc_t, typename F>
void forward_and_reduce(int64_t n, int64_t chunk, bool reduce, int64_t mean_divisor,
                        scalar_t* result, const F& range) {
  if (!reduce) {
    chunked_for(n, chunk, [&](int64_t b, int64_t e) { range(b, e); });
    return;
  }
  acc_t s = chunked_sum<acc_t>(n, chunk, range);
  if (mean_divisor >= 0) s = mean_divisor > 0 ? s / static_cast<acc_t>(mean_divisor) : acc_t(0);
  *result = static_cast<scalar_t>(s);
}

// The same, 'mean' dividing by n.
template <typename scalar_t, typename acc_t, typename F>
void forward_and_reduce(int64_t n, int64_t chunk, bool reduce, bool mean, scalar_t* result,
                        const F& range) {
  forward_and_reduce<scalar_t, acc_t>(n, chunk, reduce, mean ? n : int64_t(-1), result, range);
}

}  // namespace cpu
}  // namespace detloss
