// CUDA kernels of the distribution family. A row of R bin logits is held in the registers of
// a group of TPR lanes (VPT bins each), reduced with shuffles inside the group (max, sum,
// the target's two bins); the forward also writes each row's statistics (max and sum of
// exp, or the integral's lse and mean) so that the backward is one pass with no reductions. Formulas:
// csrc/math/dfl.h; launch and deterministic reduction: csrc/cuda/launch.cuh.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "../math/dfl.h"
#include "../ops/dfl.h"
#include "dfl_rows.cuh"
#include "launch.cuh"

namespace detloss {
namespace cuda {
namespace {

// GRAD (DFL only): also the row's gradient at upstream 1, from the max and sum in registers.
template <typename T, int VPT, int TPR, bool INTEGRAL, bool GRAD = false>
struct DflForward {
  using O = at::opmath_type<T>;
  static constexpr int kMinBlocks = dfl_min_blocks<T>();
  DflParams<T> p;

  __device__ __forceinline__ O operator()(int64_t u) const {
    const int64_t r = u / TPR;
    const int lane = static_cast<int>(u % TPR);
    const T* row = p.pred + r * p.bins;
    O v[VPT];
    load_bins<T, VPT>(p, row, lane * VPT, v, -INFINITY);
    O m = v[0];
#pragma unroll
    for (int j = 1; j < VPT; ++j) m = math::dl_max(m, v[j]);
    m = group_max<TPR>(m);
    O s(0), si(0);
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      const O e = math::dl_exp(v[j] - m);  // exp(-inf) = 0 for padding
      s += e;
      if constexpr (INTEGRAL) si += e * O(lane * VPT + j);
    }
    s = group_sum<TPR>(s);
    if constexpr (INTEGRAL) {
      return finish_row<T, true>(p, r, lane, m, s, group_sum<TPR>(si), math::DflTarget<O>{});
    } else {
      const math::DflTarget<O> t = math::dfl_target_at(p.target, p.split, r, p.bins);
      O lin(0);
#pragma unroll
      for (int j = 0; j < VPT; ++j) lin += math::dfl_pick(t, lane * VPT + j, v[j]);
      const O loss = finish_row<T, false>(p, r, lane, m, s, group_sum<TPR>(lin), t);
      if constexpr (GRAD) {  // every lane holds m and s (butterfly reductions)
        const RowGrad<T, false> grad(p, r, m, s);
        O res[VPT];
#pragma unroll
        for (int j = 0; j < VPT; ++j) res[j] = grad(lane * VPT + j, v[j]);
        store_bins<T, VPT>(p, p.grad_out + r * p.bins, lane * VPT, res);
      }
      return loss;
    }
  }
};

template <typename T, int VPT, int TPR, bool INTEGRAL>
struct DflBackward {
  using O = at::opmath_type<T>;
  static constexpr int kMinBlocks = dfl_min_blocks<T>();
  DflParams<T> p;

  __device__ __forceinline__ O operator()(int64_t u) const {
    const int64_t r = u / TPR;
    const int lane = static_cast<int>(u % TPR);
    const T* row = p.pred + r * p.bins;
    O v[VPT];
    load_bins<T, VPT>(p, row, lane * VPT, v, O(0));
    const RowGrad<T, INTEGRAL> grad(p, r);
    O res[VPT];
#pragma unroll
    for (int j = 0; j < VPT; ++j) res[j] = grad(lane * VPT + j, v[j]);
    store_bins<T, VPT>(p, p.out + r * p.bins, lane * VPT, res);
    return O(0);
  }
};

// Rows longer than 256 bins (up to kDflMaxBins) do not fit in registers: a warp walks the
// row in packs of 4 bins per lane, keeping a running max m and a sum s of exp(z - m)
// rescaled whenever m grows (online softmax), then combines its lanes' (m, s):
//   M = max_l m_l,  S = sum_l s_l * exp(m_l - M).
// The backward needs no reduction: every bin's gradient follows from the stats.
constexpr int kLongTpr = 32, kLongStep = 4 * kLongTpr;

template <typename T, bool INTEGRAL, bool GRAD = false>
struct DflForwardLong {
  using O = at::opmath_type<T>;
  // fp64 with the gradient's second walk spilled at ptxas's default target
  static constexpr int kMinBlocks = GRAD ? dfl_min_blocks<T>() : 0;
  DflParams<T> p;

  __device__ __forceinline__ O operator()(int64_t u) const {
    const int64_t r = u / kLongTpr;
    const int lane = static_cast<int>(u % kLongTpr);
    const T* row = p.pred + r * p.bins;
    const math::DflTarget<O> t =
        INTEGRAL ? math::DflTarget<O>{} : math::dfl_target_at(p.target, p.split, r, p.bins);
    O m(-INFINITY), s(0), si(0), lin(0);
    for (int first = lane * 4; first < p.bins; first += kLongStep) {
      O v[4];
      load_bins<T, 4>(p, row, first, v, -INFINITY);
      const O nm = math::dl_max(m, math::dl_max(math::dl_max(v[0], v[1]), math::dl_max(v[2], v[3])));
      if (nm == -INFINITY) continue;  // only -inf so far: nothing to add
      const O scale = math::dl_exp(m - nm);  // m = -inf on the first pack: 0
      s *= scale;
      if constexpr (INTEGRAL) si *= scale;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const O e = math::dl_exp(v[k] - nm);
        s += e;
        if constexpr (INTEGRAL) si += e * O(first + k);
        if constexpr (!INTEGRAL) lin += math::dfl_pick(t, first + k, v[k]);
      }
      m = nm;
    }
    const O M = group_max<kLongTpr>(m);
    const O f = m == -INFINITY ? O(0) : math::dl_exp(m - M);
    const O S = group_sum<kLongTpr>(s * f);
    const O loss = finish_row<T, INTEGRAL>(
        p, r, lane, M, S, INTEGRAL ? group_sum<kLongTpr>(si * f) : group_sum<kLongTpr>(lin), t);
    if constexpr (GRAD && !INTEGRAL) {  // a second walk (the row is in L1/L2 now)
      const RowGrad<T, false> grad(p, r, M, S);
      T* gz = p.grad_out + r * p.bins;
      for (int first = lane * 4; first < p.bins; first += kLongStep) {
        O v[4], res[4];
        load_bins<T, 4>(p, row, first, v, O(0));
#pragma unroll
        for (int k = 0; k < 4; ++k) res[k] = grad(first + k, v[k]);
        store_bins<T, 4>(p, gz, first, res);
      }
    }
    return loss;
  }
};

template <typename T, bool INTEGRAL>
struct DflBackwardLong {
  using O = at::opmath_type<T>;
  static constexpr int kMinBlocks = 0;
  DflParams<T> p;

  __device__ __forceinline__ O operator()(int64_t u) const {
    const int64_t r = u / kLongTpr;
    const int lane = static_cast<int>(u % kLongTpr);
    const T* row = p.pred + r * p.bins;
    T* gz = p.out + r * p.bins;
    const RowGrad<T, INTEGRAL> grad(p, r);
    for (int first = lane * 4; first < p.bins; first += kLongStep) {
      O v[4], res[4];
      load_bins<T, 4>(p, row, first, v, O(0));
#pragma unroll
      for (int k = 0; k < 4; ++k) res[k] = grad(first + k, v[k]);
      store_bins<T, 4>(p, gz, first, res);
    }
    return O(0);
  }
};

// (bins per lane, lanes per row) for a row of R bins held in registers: R = 16 and 17, the
// common heads, take 4 and 5 lanes' worth of a 4 x 4 and 4 x 8 group. Longer rows (VPT = 0)
// take the DflForwardLong / DflBackwardLong walk.
template <typename F>
void with_config(int32_t bins, const F& f) {
  if (bins <= 16) return f(std::integral_constant<int, 4>(), std::integral_constant<int, 4>());
  if (bins <= 32) return f(std::integral_constant<int, 4>(), std::integral_constant<int, 8>());
  if (bins <= 128) return f(std::integral_constant<int, 4>(), std::integral_constant<int, 32>());
  if (bins <= 256) return f(std::integral_constant<int, 8>(), std::integral_constant<int, 32>());
  return f(std::integral_constant<int, 0>(), std::integral_constant<int, kLongTpr>());
}

template <typename T, int VPT, int TPR, bool INTEGRAL, bool GRAD = false>
using ForwardUnit = std::conditional_t<VPT == 0, DflForwardLong<T, INTEGRAL, GRAD>,
                                       DflForward<T, (VPT == 0 ? 4 : VPT), TPR, INTEGRAL, GRAD>>;
template <typename T, int VPT, int TPR, bool INTEGRAL>
using BackwardUnit = std::conditional_t<VPT == 0, DflBackwardLong<T, INTEGRAL>,
                                        DflBackward<T, (VPT == 0 ? 4 : VPT), TPR, INTEGRAL>>;

template <typename T>
DflParams<T> params(const DflArgs& a, bool integral) {
  DflParams<T> p{};
  p.pred = a.pred.const_data_ptr<T>();
  p.target = integral ? nullptr : a.target.const_data_ptr<at::opmath_type<T>>();
  p.split = a.split;
  p.weight = a.weight.typed<T>();
  p.grad_scale = 1;
  p.bins = a.bins;
  p.vec_ok = a.bins % 4 == 0 && aligned16(p.pred);  // 16B covers Pack<T, 4> for half..float
  if (sizeof(T) == 8) p.vec_ok = p.vec_ok && reinterpret_cast<uintptr_t>(p.pred) % 32 == 0;
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const DflArgs& a, bool integral,
                                                       bool with_grad) {
  const c10::cuda::CUDAGuard guard(a.pred.device());
  const bool reduce = !integral && a.reduction != Reduction::kNone;
  at::Tensor out = reduce ? at::empty({}, a.pred.options()) : at::empty(a.shape, a.pred.options());
  std::vector<int64_t> sshape(a.shape);
  sshape.push_back(2);
  at::Tensor stats =
      at::empty(sshape, a.pred.options().dtype(at::toOpMathType(a.pred.scalar_type())));
  at::Tensor gz;
  if (with_grad) gz = at::empty(a.pred.sizes(), a.pred.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.pred.scalar_type(),
                                  "detloss_dfl_forward_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    DflParams<scalar_t> p = params<scalar_t>(a, integral);
    p.stats_out = stats.mutable_data_ptr<O>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    p.out = reduce ? nullptr : o;
    const O scale = reduction_scale<O>(a.reduction, a.rows);
    if (with_grad) {
      p.grad_out = gz.mutable_data_ptr<scalar_t>();
      p.grad_scale = scale;  // upstream 1: the 'mean' scale only
    }
    with_config(a.bins, [&](auto vpt, auto tpr) {
      constexpr int VPT = decltype(vpt)::value, TPR = decltype(tpr)::value;
      const int64_t units = a.rows * TPR;
      if (integral) {
        launch_map_reduce<O, scalar_t>(units, ForwardUnit<scalar_t, VPT, TPR, true>{p}, nullptr, scale,
                                       a.pred.device());
      } else if (with_grad) {
        launch_map_reduce<O, scalar_t>(units, ForwardUnit<scalar_t, VPT, TPR, false, true>{p},
                                       reduce ? o : nullptr, scale, a.pred.device());
      } else {
        launch_map_reduce<O, scalar_t>(units, ForwardUnit<scalar_t, VPT, TPR, false>{p},
                                       reduce ? o : nullptr, scale, a.pred.device());
      }
    });
  });
  return {out, stats, gz};
}

at::Tensor backward(const DflArgs& a, const OperandDesc& grad, bool integral) {
  const c10::cuda::CUDAGuard guard(a.pred.device());
  at::Tensor gz = at::empty(a.pred.sizes(), a.pred.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.pred.scalar_type(),
                                  "detloss_dfl_backward_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    DflParams<scalar_t> p = params<scalar_t>(a, integral);
    p.grad = grad.typed<scalar_t>();
    p.grad_scale = integral ? O(1) : reduction_scale<O>(a.reduction, a.rows);
    p.stats = a.stats.const_data_ptr<O>();
    p.out = gz.mutable_data_ptr<scalar_t>();
    with_config(a.bins, [&](auto vpt, auto tpr) {
      constexpr int VPT = decltype(vpt)::value, TPR = decltype(tpr)::value;
      const int64_t units = a.rows * TPR;
      if (integral) {
        launch_map_reduce<O, scalar_t>(units, BackwardUnit<scalar_t, VPT, TPR, true>{p}, nullptr,
                                       O(1), a.pred.device());
      } else {
        launch_map_reduce<O, scalar_t>(units, BackwardUnit<scalar_t, VPT, TPR, false>{p}, nullptr,
                                       O(1), a.pred.device());
      }
    });
  });
  return gz;
}

// The distillation KL: a thread a row (math::dfl_kl_row; R ~ 17-33 bins, rows ~ 10^4-10^6).
template <typename T>
struct DflKlUnit {
  using O = at::opmath_type<T>;
  const T* pred;
  const T* teacher;
  T* loss;
  O* stats;
  int32_t bins;
  O temp;
  __device__ __forceinline__ float operator()(int64_t r) const {
    const math::DflKlRow<O> k = math::dfl_kl_row(pred + r * bins, teacher + r * bins, bins, temp);
    loss[r] = static_cast<T>(k.loss);
    stats[2 * r] = k.lse_z;
    stats[2 * r + 1] = k.lse_u;
    return 0.f;
  }
};

template <typename T>
struct DflKlGradUnit {
  using O = at::opmath_type<T>;
  const T* pred;
  const T* teacher;
  const T* grad;
  const O* stats;
  T* out;
  int32_t bins;
  O temp;
  __device__ __forceinline__ float operator()(int64_t r) const {
    math::dfl_kl_row_grad(pred + r * bins, teacher + r * bins, bins, temp, stats[2 * r],
                          stats[2 * r + 1], static_cast<O>(grad[r]), out + r * bins);
    return 0.f;
  }
};

}  // namespace
}  // namespace cuda

DflPair dfl_kl_cuda(const DflKlArgs& a) {
  const c10::cuda::CUDAGuard guard(a.pred.device());
  at::Tensor out = at::empty(a.shape, a.pred.options());
  std::vector<int64_t> st(a.shape);
  st.push_back(2);
  at::Tensor stats = at::empty(st, a.pred.options().dtype(at::toOpMathType(a.pred.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.pred.scalar_type(), "detloss_dfl_kl_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    const cuda::DflKlUnit<scalar_t> f{a.pred.const_data_ptr<scalar_t>(),
                                      a.teacher.const_data_ptr<scalar_t>(),
                                      out.mutable_data_ptr<scalar_t>(), stats.mutable_data_ptr<O>(),
                                      a.bins, static_cast<O>(a.temperature)};
    cuda::launch_map_reduce<float, float>(a.rows, f, nullptr, 1.f, a.pred.device());
  });
  return {out, stats};
}

at::Tensor dfl_kl_backward_cuda(const DflKlArgs& a) {
  const c10::cuda::CUDAGuard guard(a.pred.device());
  at::Tensor gz = at::empty(a.pred.sizes(), a.pred.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.pred.scalar_type(), "detloss_dfl_kl_backward_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    const cuda::DflKlGradUnit<scalar_t> f{
        a.pred.const_data_ptr<scalar_t>(), a.teacher.const_data_ptr<scalar_t>(),
        a.grad.const_data_ptr<scalar_t>(), a.stats.const_data_ptr<O>(),
        gz.mutable_data_ptr<scalar_t>(), a.bins, static_cast<O>(a.temperature)};
    cuda::launch_map_reduce<float, float>(a.rows, f, nullptr, 1.f, a.pred.device());
  });
  return gz;
}

DflPair dfl_forward_cuda(const DflArgs& a) {
  auto [out, stats, grad] = cuda::forward(a, false, false);
  return {out, stats};
}
std::tuple<at::Tensor, at::Tensor, at::Tensor> dfl_forward_with_grad_cuda(const DflArgs& a) {
  return cuda::forward(a, false, true);
}
at::Tensor dfl_backward_cuda(const DflArgs& a, const OperandDesc& g) {
  return cuda::backward(a, g, false);
}
DflPair dfl_integral_cuda(const DflArgs& a) {
  auto [out, stats, grad] = cuda::forward(a, true, false);
  return {out, stats};
}
at::Tensor dfl_integral_backward_cuda(const DflArgs& a, const OperandDesc& g) {
  return cuda::backward(a, g, true);
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, DETLOSS_CUDA_KEY, m) {
  m.impl("dfl_loss", &detloss::dfl_loss_entry<detloss::dfl_forward_cuda>);
  m.impl("dfl_loss_with_grad", &detloss::dfl_loss_with_grad_entry<detloss::dfl_forward_with_grad_cuda>);
  m.impl("dfl_backward", &detloss::dfl_backward_entry<detloss::dfl_backward_cuda>);
  m.impl("dfl_integral", &detloss::dfl_integral_entry<detloss::dfl_integral_cuda>);
  m.impl("dfl_kl", &detloss::dfl_kl_entry<detloss::dfl_kl_cuda>);
  m.impl("dfl_kl_backward", &detloss::dfl_kl_backward_entry<detloss::dfl_kl_backward_cuda>);
  m.impl("dfl_integral_backward",
         &detloss::dfl_integral_backward_entry<detloss::dfl_integral_backward_cuda>);
}
