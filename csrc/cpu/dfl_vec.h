// The vectorised CPU loops of the distribution family: one row at a time, its bins in
// vectors (R = 16 is one AVX512 vector, two AVX2 ones); exp once per bin, kept for the
// gradient. Included only by csrc/cpu/capability/.
#pragma once

#if !defined(CPU_CAPABILITY)
#error "dfl_vec.h is compiled once per CPU capability; include it from csrc/cpu/capability/"
#endif

#include "vec_ops.h"  // first: the Vectorized overloads of the dl_* shims

#include <algorithm>
#include <limits>

#include "../math/dfl.h"
#include "dfl_kernel.h"

namespace detloss {
namespace cpu {
namespace CPU_CAPABILITY {
namespace {

// Forward. Rows of up to kColumnBins bins go W at a time, transposed: lane k holds row r0 + k
// and every step works on one bin of all W rows, so the row reductions (max, sum) are plain
// vertical operations and the per-row log and targets are vectors too. (Row by row, with one
// row per vector, the horizontal reductions cost ~8x the exp.) Longer rows go one at a time.
constexpr int32_t kColumnBins = 64;

template <class T>
at::opmath_type<T> dfl_forward_columns(const DflLoopArgs<T>& a, int64_t begin, int64_t end) {
  using O = at::opmath_type<T>;
  using V = at::vec::Vectorized<O>;
  constexpr int64_t W = V::size();
  const int32_t R = a.bins;
  alignas(64) O col[kColumnBins * W];  // col[j·W + k] = z of row r0 + k, bin j; then exp
  alignas(64) O lin[W], res[W], lse_l[W], mean_l[W];
  double acc = 0;  // rows' losses, summed in double (see simd::LaneSum)
  const V ninf(-std::numeric_limits<O>::infinity());
  for (int64_t r0 = begin; r0 < end; r0 += W) {
    const int64_t n = std::min<int64_t>(W, end - r0);
    if (a.bin_stride != 0) {  // bin-major: the columns are in memory already
      for (int32_t j = 0; j < R; ++j) {
        const T* zc = a.pred + r0 + j * a.bin_stride;
        for (int64_t k = 0; k < n; ++k) col[j * W + k] = static_cast<O>(zc[k]);
      }
    } else {
      const T* z = a.pred + r0 * R;
      for (int64_t k = 0; k < n; ++k) {  // transpose the n rows into columns
        const T* zr = z + k * R;
        for (int32_t j = 0; j < R; ++j) col[j * W + k] = static_cast<O>(zr[j]);
      }
    }
    for (int64_t k = n; k < W; ++k)
      for (int32_t j = 0; j < R; ++j) col[j * W + k] = O(0);
    V m = ninf;
    for (int32_t j = 0; j < R; ++j) m = math::dl_max(m, V::loadu(col + j * W));
    // the targets, per lane (the shared scalar formula), and wl·z_l + wr·z_r while col holds z
    math::DflTarget<O> tk[W];
    if (!a.integral) {
      for (int64_t k = 0; k < W; ++k) {
        tk[k] = k < n ? math::dfl_target_at(a.target, a.split, r0 + k, R) : math::dfl_target(O(0), R);
        lin[k] = tk[k].wl * col[tk[k].l * W + k] + tk[k].wr * col[(tk[k].l + 1) * W + k];
      }
    }
    V s(O(0)), si(O(0));
    for (int32_t j = 0; j < R; ++j) {
      const V e = (V::loadu(col + j * W) - m).exp();
      e.store(col + j * W);  // col now holds exp(z - m)
      s = s + e;
      if (a.integral) si = si + e * V(O(j));
    }
    const V lse = m + s.log();
    lse.store(lse_l);
    if (a.integral) {
      (si / s).store(mean_l);
      for (int64_t k = 0; k < n; ++k) {
        a.out[r0 + k] = static_cast<T>(mean_l[k]);
        a.stats_out[2 * (r0 + k)] = lse_l[k];
        a.stats_out[2 * (r0 + k) + 1] = mean_l[k];
      }
      continue;
    }
    const V w = simd::load_operand<O>(a.weight, r0, n, O(1));
    const V loss = (lse - V::loadu(lin)) * w;
    loss.store(res);
    O ml[W], sl[W];
    m.store(ml);
    s.store(sl);
    for (int64_t k = 0; k < n; ++k) {
      if (tk[k].nan) res[k] = math::nan_value<O>();
      if (a.out != nullptr) a.out[r0 + k] = static_cast<T>(res[k]);
      a.stats_out[2 * (r0 + k)] = ml[k];
      a.stats_out[2 * (r0 + k) + 1] = sl[k];
      acc += res[k];
    }
    if (a.grad_out != nullptr) {
      // the gradient for an upstream gradient of 1, with the very arithmetic of
      // dfl_backward_impl (p = exp(z - m)·(1/s), then g·p, the target bins g·(p - w)), so
      // that a retained graph's second backward, which runs that, reproduces it bit for bit
      const V inv_s = V(O(1)) / s;
      O gl[W];
      (V(a.grad_scale) * w).store(gl);
      for (int32_t j = 0; j < R; ++j) (V::loadu(col + j * W) * inv_s).store(col + j * W);  // p
      for (int64_t k = 0; k < n; ++k) {
        T* row = a.grad_out + (r0 + k) * R;
        const math::DflTarget<O>& t = tk[k];
        if (t.nan) {
          for (int32_t j = 0; j < R; ++j) row[j] = static_cast<T>(math::nan_value<O>());
          continue;
        }
        for (int32_t j = 0; j < R; ++j) row[j] = static_cast<T>(gl[k] * col[j * W + k]);
        for (int32_t i = t.l; i <= t.l + 1; ++i)
          row[i] = static_cast<T>(gl[k] * math::dfl_grad(t, i, col[i * W + k]));
      }
    }
  }
  return static_cast<O>(acc);
}

template <class T>
at::opmath_type<T> dfl_forward_impl(const DflLoopArgs<T>& a, int64_t begin, int64_t end) {
  using O = at::opmath_type<T>;
  using V = at::vec::Vectorized<O>;
  constexpr int64_t W = V::size();
  const int32_t R = a.bins;
  if (R <= kColumnBins) return dfl_forward_columns<T>(a, begin, end);
  const V ninf(-std::numeric_limits<O>::infinity());
  const auto vmax = [](V& x, V& y) { return at::vec::maximum(x, y); };
  const auto vadd = [](V& x, V& y) { return x + y; };
  double acc = 0;  // rows' losses, summed in double (see simd::LaneSum)
  for (int64_t row = begin; row < end; ++row) {
    const T* z = a.pred + row * R;
    V vm = ninf;
    for (int32_t c = 0; c < R; c += W) {
      const int64_t n = std::min<int64_t>(W, R - c);
      const V zc = simd::load(z + c, n);
      vm = math::dl_max(vm, n == W ? zc : V::set(ninf, zc, n));
    }
    const O m = at::vec::vec_reduce_all<O>(vmax, vm);
    V vs(O(0)), vi(O(0));
    V idx = V::arange(O(0), O(1));
    for (int32_t c = 0; c < R; c += W, idx = idx + V(O(W))) {
      const int64_t n = std::min<int64_t>(W, R - c);
      V ec = (simd::load(z + c, n) - V(m)).exp();
      if (n < W) ec = V::set(V(O(0)), ec, n);
      vs = vs + ec;
      if (a.integral) vi = vi + ec * idx;
    }
    const O s = at::vec::vec_reduce_all<O>(vadd, vs);
    const O lse = m + std::log(s);
    if (a.integral) {
      const O d = at::vec::vec_reduce_all<O>(vadd, vi) / s;
      a.out[row] = static_cast<T>(d);
      a.stats_out[2 * row] = lse;
      a.stats_out[2 * row + 1] = d;
      continue;
    }
    const math::DflTarget<O> t = math::dfl_target_at(a.target, a.split, row, R);
    O loss = lse - (t.wl * static_cast<O>(z[t.l]) + t.wr * static_cast<O>(z[t.l + 1]));
    if (t.nan) loss = math::nan_value<O>();
    loss *= math::operand_at(a.weight, row, O(1));
    if (a.out != nullptr) a.out[row] = static_cast<T>(loss);
    a.stats_out[2 * row] = m;
    a.stats_out[2 * row + 1] = s;
    acc += loss;
  }
  return static_cast<O>(acc);
}

// Backward: one pass, no reductions, from the saved row statistics:
//   loss:     p = exp(z - m)·(1/s), g·(p - wl·[i = l] - wr·[i = r])
//   integral: p = exp(z - lse),     g·p·(i - mean)
template <class T>
void dfl_backward_impl(const DflLoopArgs<T>& a, int64_t begin, int64_t end) {
  using O = at::opmath_type<T>;
  using V = at::vec::Vectorized<O>;
  constexpr int64_t W = V::size();
  const int32_t R = a.bins;
  alignas(64) O e[math::kDflMaxBins + W];  // a row's probabilities
  if (a.integral && a.bin_stride != 0) {
    // bin-major: W rows a vector, one bin at a time, with the row version's arithmetic
    alignas(64) O lse_l[W], d_l[W], g_l[W];
    for (int64_t r0 = begin; r0 < end; r0 += W) {
      const int64_t n = std::min<int64_t>(W, end - r0);
      for (int64_t k = 0; k < W; ++k) {
        const int64_t row = r0 + std::min<int64_t>(k, n - 1);
        lse_l[k] = a.stats[2 * row];
        d_l[k] = a.stats[2 * row + 1];
        g_l[k] = math::operand_at(a.grad, row, O(1));
      }
      const V lse = V::loadu(lse_l), d = V::loadu(d_l), g = V::loadu(g_l);
      for (int32_t j = 0; j < R; ++j) {
        const int64_t off = r0 + j * a.bin_stride;
        simd::store(a.out + off, g * (simd::load(a.pred + off, n) - lse).exp() * (V(O(j)) - d), n);
      }
    }
    return;
  }
  for (int64_t row = begin; row < end; ++row) {
    const T* z = a.pred + row * R;
    T* gz = a.out + row * R;
    if (a.integral) {
      const O lse = a.stats[2 * row], d = a.stats[2 * row + 1];
      const V g(math::operand_at(a.grad, row, O(1)));
      V id = V::arange(O(0), O(1));
      for (int32_t c = 0; c < R; c += W, id = id + V(O(W))) {
        const int64_t n = std::min<int64_t>(W, R - c);
        simd::store(gz + c, g * (simd::load(z + c, n) - V(lse)).exp() * (id - V(d)), n);
      }
      continue;
    }
    const O m = a.stats[2 * row], inv_s = O(1) / a.stats[2 * row + 1];
    const O g = math::operand_at(a.grad, row, O(1)) * a.grad_scale *
                math::operand_at(a.weight, row, O(1));
    const math::DflTarget<O> t = math::dfl_target_at(a.target, a.split, row, R);
    if (t.nan) {
      for (int32_t i = 0; i < R; ++i) gz[i] = static_cast<T>(math::nan_value<O>());
      continue;
    }
    for (int32_t c = 0; c < R; c += W) {
      const int64_t n = std::min<int64_t>(W, R - c);
      const V p = (simd::load(z + c, n) - V(m)).exp() * V(inv_s);
      p.store(e + c);
      simd::store(gz + c, V(g) * p, n);
    }
    for (int32_t i = t.l; i <= t.l + 1; ++i)  // the two target bins: g·(p - w)
      gz[i] = static_cast<T>(g * math::dfl_grad(t, i, e[i]));
  }
}

}  // namespace

// The forward, and with grad_out set the backward of the same rows right after it, while
// they are still in cache (the autograd path on CPU: one pass over memory instead of two).
template <class T>
at::opmath_type<T> dfl_forward_and_grad(const DflLoopArgs<T>& a, int64_t begin, int64_t end) {
  const auto acc = dfl_forward_impl<T>(a, begin, end);
  if (a.grad_out != nullptr && a.bins > kColumnBins) {  // (the column path wrote it already)
    DflLoopArgs<T> b = a;
    b.out = a.grad_out;
    b.stats = a.stats_out;
    b.grad = Operand<T>();  // upstream gradient 1; grad_scale carries the 'mean'
    dfl_backward_impl<T>(b, begin, end);
  }
  return acc;
}

#define DETLOSS_DEFINE_DFL_CPU(T)                                                        \
  at::opmath_type<T> dfl_forward_rows(const DflLoopArgs<T>& a, int64_t b, int64_t e) { \
    return dfl_forward_and_grad<T>(a, b, e);                                             \
  }                                                                                      \
  void dfl_backward_rows(const DflLoopArgs<T>& a, int64_t b, int64_t e) {              \
    dfl_backward_impl<T>(a, b, e);                                                       \
  }

DETLOSS_DEFINE_DFL_CPU(float)
DETLOSS_DEFINE_DFL_CPU(double)
DETLOSS_DEFINE_DFL_CPU(c10::Half)
DETLOSS_DEFINE_DFL_CPU(c10::BFloat16)
#undef DETLOSS_DEFINE_DFL_CPU

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace detloss
