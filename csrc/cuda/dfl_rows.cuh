// The distribution family's row machinery on CUDA (csrc/cuda/dfl_kernel.cu's units use it): a
// row of R bin logits held by a group of TPR lanes, the group's shuffle reductions, the
// kernels' parameters, the bins' loads and stores, and what a row's forward owes and its
// backward computes from the forward's statistics.
#pragma once

#include <ATen/OpMathType.h>

#include <cfloat>
#include <type_traits>

#include "../math/dfl.h"
#include "launch.cuh"

namespace detloss {
namespace cuda {
namespace {

template <int TPR>
__device__ __forceinline__ unsigned group_mask() {
  if constexpr (TPR == 32) {
    return 0xffffffffu;
  } else {
    const unsigned lane = threadIdx.x & 31u;
    return ((1u << TPR) - 1u) << (lane & ~(TPR - 1u));
  }
}

template <int TPR, typename O>
__device__ __forceinline__ O group_sum(O v) {
  const unsigned mask = group_mask<TPR>();
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v += __shfl_xor_sync(mask, v, o, TPR);
  return v;
}

template <int TPR, typename O>
__device__ __forceinline__ O group_max(O v) {
  const unsigned mask = group_mask<TPR>();
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) v = math::dl_max(v, __shfl_xor_sync(mask, v, o, TPR));
  return v;
}

template <typename T>
struct DflParams {
  using O = at::opmath_type<T>;
  const T* __restrict__ pred;
  const O* __restrict__ target;  // [rows], or [rows, 2] (left bin, right weight) where split
  Operand<T> weight, grad;
  O grad_scale;
  T* __restrict__ out;       // forward: the row results (or null: reduce); backward: grad
  O* __restrict__ stats_out;  // forward
  const O* __restrict__ stats;  // backward
  T* __restrict__ grad_out;   // forward of a differentiable DFL call: d(loss)/d(pred) at upstream 1
  int32_t bins;
  bool vec_ok;  // rows start 4·sizeof(T)-aligned: load/store bins in 4s
  bool split;   // D-FINE's (left bin, right bin's weight) targets
};

// Loads bins first .. first + VPT - 1 of a row (`fill` past its end): in packs of 4 when
// the row is aligned for them, one by one at a row's ragged end.
template <typename T, int VPT>
__device__ __forceinline__ void load_bins(const DflParams<T>& p, const T* row, int first,
                                          at::opmath_type<T> (&v)[VPT], at::opmath_type<T> fill) {
  using O = at::opmath_type<T>;
  if (p.vec_ok && first + VPT <= p.bins) {
#pragma unroll
    for (int j = 0; j < VPT; j += 4) {
      const Pack<T, 4> q = *reinterpret_cast<const Pack<T, 4>*>(row + first + j);
#pragma unroll
      for (int k = 0; k < 4; ++k) v[j + k] = static_cast<O>(q.v[k]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < VPT; ++j) v[j] = first + j < p.bins ? static_cast<O>(row[first + j]) : fill;
  }
}

template <typename T, int VPT>
__device__ __forceinline__ void store_bins(const DflParams<T>& p, T* row, int first,
                                           const at::opmath_type<T> (&res)[VPT]) {
  if (p.vec_ok && first + VPT <= p.bins) {
#pragma unroll
    for (int j = 0; j < VPT; j += 4) {
      Pack<T, 4> q;
#pragma unroll
      for (int k = 0; k < 4; ++k) q.v[k] = static_cast<T>(res[j + k]);
      *reinterpret_cast<Pack<T, 4>*>(row + first + j) = q;
    }
  } else {
#pragma unroll
    for (int j = 0; j < VPT; ++j)
      if (first + j < p.bins) row[first + j] = static_cast<T>(res[j]);
  }
}

// fp64 units need more registers than ptxas's default target gives them (it spills around
// exp); asking for at most 2 blocks of 256 per SM lets them use up to 128.
template <typename T>
constexpr int dfl_min_blocks() {
  return sizeof(T) == 8 ? 2 : 0;
}

// Lane 0 of a row's group writes what the forward owes for the row, from the group-reduced
// max M, sum S of exp(z - M) and x: the integral's sum of i·exp(z_i - M), or DFL's target-
// weighted logits. Returns the row's (weighted) loss; 0 for the integral and other lanes.
template <typename T, bool INTEGRAL>
__device__ __forceinline__ at::opmath_type<T> finish_row(const DflParams<T>& p, int64_t r,
                                                         int lane, at::opmath_type<T> M,
                                                         at::opmath_type<T> S,
                                                         at::opmath_type<T> x,
                                                         const math::DflTarget<at::opmath_type<T>>& t) {
  using O = at::opmath_type<T>;
  if (lane != 0) return O(0);
  const O lse = M + math::dl_log(S);
  if constexpr (INTEGRAL) {
    const O d = x / S;  // the expected bin
    p.out[r] = static_cast<T>(d);
    p.stats_out[2 * r] = lse;
    p.stats_out[2 * r + 1] = d;
    return O(0);
  } else {
    O loss = t.nan ? math::nan_value<O>() : lse - x;
    loss *= math::operand_at(p.weight, r, O(1));
    if (p.out != nullptr) p.out[r] = static_cast<T>(loss);
    p.stats_out[2 * r] = M;
    p.stats_out[2 * r + 1] = S;
    return loss;
  }
}

// A row's backward, read once from the forward's stats; every bin's gradient then follows
// with no reduction. Integral: d mean / dz_i = p_i·(i - mean), p_i = exp(z_i - lse).
// DFL: dfl_grad with p_i = exp(z_i - max) / sum.
template <typename T, bool INTEGRAL>
struct RowGrad {
  using O = at::opmath_type<T>;
  O a, b, g;  // integral: (lse, mean, upstream); DFL: (max, 1 / sum, upstream·scale·weight)
  math::DflTarget<O> t{};

  // from the saved stats (the backward)
  __device__ __forceinline__ RowGrad(const DflParams<T>& p, int64_t r) {
    if constexpr (INTEGRAL) {
      a = p.stats[2 * r];
      b = p.stats[2 * r + 1];
      g = math::operand_at(p.grad, r, O(1));
    } else {
      init(p, r, p.stats[2 * r], p.stats[2 * r + 1]);
    }
  }
  // from the row's max and sum of exp, still in registers (the forward of a differentiable
  // call): the same values the stats hold, the same arithmetic, the same bits
  __device__ __forceinline__ RowGrad(const DflParams<T>& p, int64_t r, O max, O sum) {
    init(p, r, max, sum);
  }
  __device__ __forceinline__ void init(const DflParams<T>& p, int64_t r, O max, O sum) {
    t = math::dfl_target_at(p.target, p.split, r, p.bins);
    a = max;
    g = math::operand_at(p.grad, r, O(1)) * p.grad_scale * math::operand_at(p.weight, r, O(1));
    b = O(1) / sum;
  }
  __device__ __forceinline__ O operator()(int i, O z) const {
    if constexpr (INTEGRAL) {
      return g * math::dl_exp(z - a) * (O(i) - b);
    } else {
      return t.nan ? math::nan_value<O>() : g * math::dfl_grad(t, i, math::dl_exp(z - a) * b);
    }
  }
};

}  // namespace
}  // namespace cuda
}  // namespace detloss
