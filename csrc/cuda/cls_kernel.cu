// CUDA kernels of the classification family. Thin: 128-bit loads, the shared formula
// (csrc/math/cls.h), stores, and the deterministic fused reduction of launch.cuh.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

#include "../math/cls.h"
#include "../ops/cls.h"
#include "launch.cuh"

namespace detloss {
namespace cuda {
namespace {

using math::ClsKind;

// One unit = kVec consecutive elements (16 bytes of input). Full, aligned units use
// 128-bit loads and stores; the tail unit (and misaligned tensors) go element by element.
// POW >= 0 fixes the focusing exponent's PowMode at compile time (the launch picks it when
// the config matches); POW = -1 switches on cfg.pow_mode per element at run time.
template <typename T, ClsKind K, bool FORWARD, int POW = -1>
struct ClsUnit {
  using O = at::opmath_type<T>;
  static constexpr int kVec = 16 / sizeof(T);
  // fp64: ptxas's default register target spills the focal forward; allow up to 128
  static constexpr int kMinBlocks = sizeof(T) == 8 ? 2 : 0;

  const T* __restrict__ x;
  const T* __restrict__ t;
  Operand<T> weight, pos_weight, grad;
  Operand<uint8_t> label;
  T* __restrict__ out;  // forward: per-element loss or null; backward: grad_input
  int64_t n;
  O grad_scale;
  math::ClsConfig<O> cfg;
  bool vec_ok;  // x, t, out and every full operand are 16-byte aligned

  template <typename U>
  __device__ __forceinline__ void load_full(const U* __restrict__ p, int64_t base, bool full,
                                            U (&dst)[kVec]) const {
    if (full) {
      const Pack<U, kVec> v = *reinterpret_cast<const Pack<U, kVec>*>(p + base);
#pragma unroll
      for (int j = 0; j < kVec; ++j) dst[j] = v.v[j];
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) dst[j] = base + j < n ? p[base + j] : U(0);
    }
  }

  template <typename U>
  __device__ __forceinline__ void load_operand(const Operand<U>& o, int64_t base, bool full,
                                               O absent, O (&dst)[kVec]) const {
    if (o.mode == OperandMode::kFull) {
      U v[kVec];
      load_full(o.ptr, base, full, v);
#pragma unroll
      for (int j = 0; j < kVec; ++j) dst[j] = static_cast<O>(v[j]);
    } else if (o.mode == OperandMode::kAbsent) {
#pragma unroll
      for (int j = 0; j < kVec; ++j) dst[j] = absent;
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        dst[j] = base + j < n ? math::operand_at(o, base + j, absent) : absent;
    }
  }

  __device__ __forceinline__ O operator()(int64_t u) const {
    const int64_t base = u * kVec;
    const bool full = vec_ok && base + kVec <= n;
    T xs[kVec], ts[kVec];
    load_full(x, base, full, xs);
    load_full(t, base, full, ts);
    O pw[kVec], w[kVec], lab[kVec], g[kVec];
    load_operand(pos_weight, base, full, O(1), pw);
    load_operand(weight, base, full, O(1), w);
    if constexpr (K == ClsKind::kVFL) load_operand(label, base, full, O(-1), lab);
    if constexpr (!FORWARD) load_operand(grad, base, full, O(1), g);

    math::ClsConfig<O> c = cfg;
    if constexpr (POW >= 0) c.pow_mode = static_cast<math::PowMode>(POW);  // folds the switch
    O acc(0);
    T res[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const O xv = static_cast<O>(xs[j]), tv = static_cast<O>(ts[j]);
      bool pos = false;
      if constexpr (K == ClsKind::kVFL) pos = lab[j] < O(0) ? tv > O(0) : lab[j] != O(0);
      O loss, dx;
      math::cls_element<K, !FORWARD>(xv, tv, pw[j], pos, c, loss, dx);
      if constexpr (FORWARD) {
        loss *= w[j];
        res[j] = static_cast<T>(loss);
        if (base + j < n) acc += loss;
      } else {
        res[j] = static_cast<T>(dx * w[j] * g[j] * grad_scale);
      }
    }
    if (out != nullptr) {
      if (full) {
        Pack<T, kVec> v;
#pragma unroll
        for (int j = 0; j < kVec; ++j) v.v[j] = res[j];
        *reinterpret_cast<Pack<T, kVec>*>(out + base) = v;
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j)
          if (base + j < n) out[base + j] = res[j];
      }
    }
    return acc;
  }
};

bool operand_aligned(const OperandDesc& d) {
  return !d.full() || aligned16(d.tensor.const_data_ptr());
}

template <typename T, ClsKind K, bool FORWARD, int POW = -1>
void launch(const ClsArgs& a, const OperandDesc* grad, T* out, T* sum_out) {
  using Unit = ClsUnit<T, K, FORWARD, POW>;
  using O = typename Unit::O;
  Unit f;
  f.x = a.input.const_data_ptr<T>();
  f.t = a.target.const_data_ptr<T>();
  f.weight = a.weight.typed<T>();
  f.pos_weight = a.pos_weight.typed<T>();
  f.label = a.label.typed<uint8_t>();
  f.out = out;
  f.n = a.numel();
  f.cfg = a.config<O>();
  f.grad_scale = O(1);
  if (grad != nullptr) {
    f.grad = grad->typed<T>();
    f.grad_scale = reduction_scale<O>(a.reduction, f.n);
  }
  // label holds kVec bytes per unit: its full loads need kVec-byte alignment
  const bool label_ok = !a.label.full() ||
                        reinterpret_cast<uintptr_t>(a.label.tensor.const_data_ptr()) % Unit::kVec == 0;
  f.vec_ok = aligned16(f.x) && aligned16(f.t) && (out == nullptr || aligned16(out)) &&
             operand_aligned(a.weight) && operand_aligned(a.pos_weight) &&
             (grad == nullptr || operand_aligned(*grad)) && label_ok;
  const int64_t units = ceil_div(f.n, Unit::kVec);
  const O scale = reduction_scale<O>(a.reduction, f.n);
  launch_map_reduce<O, T>(units, f, sum_out, scale, a.input.device());
}

// gamma = 2 (the default of focal, QFL and VFL) gets straight-line code in fp32, the type
// every loss runs in under autocast: the per-element PowMode switch costs branches and
// blocks scheduling across the unit's elements in these compute-bound kernels.
template <typename T, ClsKind K, bool FORWARD>
void launch_pow(const ClsArgs& a, const OperandDesc* grad, T* out, T* sum_out) {
  if constexpr (std::is_same_v<T, float>) {
    if (a.config<float>().pow_mode == math::PowMode::kTwo)
      return launch<T, K, FORWARD, static_cast<int>(math::PowMode::kTwo)>(a, grad, out, sum_out);
  }
  return launch<T, K, FORWARD>(a, grad, out, sum_out);
}

template <typename T, bool FORWARD>
void launch_kind(const ClsArgs& a, const OperandDesc* grad, T* out, T* sum_out) {
  switch (a.kind) {
    case ClsKind::kFocal: return launch_pow<T, ClsKind::kFocal, FORWARD>(a, grad, out, sum_out);
    case ClsKind::kQFL: return launch_pow<T, ClsKind::kQFL, FORWARD>(a, grad, out, sum_out);
    case ClsKind::kVFL: return launch_pow<T, ClsKind::kVFL, FORWARD>(a, grad, out, sum_out);
    default: return launch<T, ClsKind::kBCE, FORWARD>(a, grad, out, sum_out);
  }
}

}  // namespace
}  // namespace cuda

at::Tensor cls_forward_cuda(const ClsArgs& a) {
  const c10::cuda::CUDAGuard guard(a.input.device());
  const bool reduce = a.reduction != Reduction::kNone;
  at::Tensor out = reduce ? at::empty({}, a.input.options())
                          : at::empty(a.input.sizes(), a.input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "detloss_cls_forward_cuda", [&] {
    scalar_t* p = out.mutable_data_ptr<scalar_t>();
    cuda::launch_kind<scalar_t, true>(a, nullptr, reduce ? nullptr : p, reduce ? p : nullptr);
  });
  return out;
}

at::Tensor cls_backward_cuda(const ClsArgs& a, const OperandDesc& grad) {
  const c10::cuda::CUDAGuard guard(a.input.device());
  at::Tensor grad_input = at::empty(a.input.sizes(), a.input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "detloss_cls_backward_cuda", [&] {
    cuda::launch_kind<scalar_t, false>(a, &grad, grad_input.mutable_data_ptr<scalar_t>(),
                                       nullptr);
  });
  return grad_input;
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(detloss, CUDA, m) {
  m.impl("cls_loss", &detloss::cls_loss_entry<detloss::cls_forward_cuda>);
  m.impl("cls_backward", &detloss::cls_backward_entry<detloss::cls_backward_cuda>);
}
