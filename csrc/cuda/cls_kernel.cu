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
// GRAD: also write d(loss)/d(input) for an upstream gradient of 1 (the forward of a
// differentiable call; the recomputing backward runs it with out == null).
// INDEX: class-index targets: element i belongs to anchor i / C, class i % C; its target is
// score[anchor] (or 1) where labels[anchor] == class, else 0; ignored anchors give 0.
// POW >= 0 fixes the focusing exponent's PowMode at compile time (the launch picks it when
// the config matches); POW = -1 switches on cfg.pow_mode per element at run time.
template <typename T, ClsKind K, bool GRAD, bool INDEX, int POW = -1>
struct ClsUnit {
  using O = at::opmath_type<T>;
  static constexpr int kVec = 16 / sizeof(T);
  // The register budget (launch.cuh): fp64 gets up to 128 registers (ptxas's default target
  // spills the focal forward); fp32 index units are held to 64 (4 blocks of 256), the dense
  // units' occupancy, which they reach without spilling; the half/bf16 index units would
  // spill at 64 and keep ptxas's choice. Registers and occupancy of every kernel: the
  // kernel report (docs/performance.md).
  static constexpr int kMinBlocks = sizeof(T) == 8 ? 2 : (sizeof(T) == 4 && INDEX ? 4 : 0);

  const T* __restrict__ x;
  const T* __restrict__ t;  // dense
  const int64_t* __restrict__ labels;  // index
  const T* __restrict__ score;         // index, or null
  int64_t classes, ignore_index;       // index
  bool class_major;                    // index: memory order [..., C, A] (inner = A)
  int64_t inner;
  Operand<T> weight, pos_weight;
  Operand<uint8_t> label;
  T* __restrict__ out;   // per-element loss or null
  T* __restrict__ grad;  // GRAD: d(loss)/d(input)
  int64_t n;
  O grad_scale;                        // 1 / (the 'mean' divisor), else 1
  const double* __restrict__ divisor;  // or: the 'mean' divisor in device memory
  math::ClsConfig<O> cfg;
  bool vec_ok;  // x, t, out, grad and every full operand are 16-byte aligned

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

  template <typename U>
  __device__ __forceinline__ void store(U* __restrict__ p, int64_t base, bool full,
                                        const U (&v)[kVec]) const {
    if (full) {
      Pack<U, kVec> pk;
#pragma unroll
      for (int j = 0; j < kVec; ++j) pk.v[j] = v[j];
      *reinterpret_cast<Pack<U, kVec>*>(p + base) = pk;
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        if (base + j < n) p[base + j] = v[j];
    }
  }

  __device__ __forceinline__ O operator()(int64_t u) const {
    const int64_t base = u * kVec;
    const bool full = vec_ok && base + kVec <= n;
    T xs[kVec];
    load_full(x, base, full, xs);
    O tv[kVec];
    bool pos[kVec], live[kVec];
    if constexpr (INDEX) {
      // the anchor and class of the unit's first element, then walk the elements (a unit
      // may cross a row): row-major [..., C] rows of classes, or class-major [..., C, A]
      // rows of anchors
      int64_t anchor, c, row = 0, in_row = 0;
      if (class_major) {
        row = base / inner;
        in_row = base - row * inner;
        c = row % classes;
        anchor = (row / classes) * inner + in_row;
      } else {
        anchor = base / classes;
        c = base - anchor * classes;
      }
      int64_t lab = labels[anchor];
      O sc = score != nullptr ? static_cast<O>(score[anchor]) : O(1);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        if (j > 0) {
          bool moved;
          if (class_major) {
            ++anchor;
            moved = true;
            if (++in_row == inner) {
              in_row = 0;
              ++row;
              c = row % classes;
              anchor = (row / classes) * inner;
            }
          } else {
            moved = ++c == classes;
            if (moved) {
              c = 0;
              ++anchor;
            }
          }
          if (moved) {
            const bool in = base + j < n;
            lab = in ? labels[anchor] : ignore_index;
            sc = score != nullptr && in ? static_cast<O>(score[anchor]) : O(1);
          }
        }
        live[j] = lab != ignore_index;
        pos[j] = lab == c;
        tv[j] = pos[j] ? sc : O(0);
      }
    } else {
      T ts[kVec];
      load_full(t, base, full, ts);
      O lab[kVec];
      if constexpr (K == ClsKind::kVFL) load_operand(label, base, full, O(-1), lab);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        tv[j] = static_cast<O>(ts[j]);
        live[j] = true;
        if constexpr (K == ClsKind::kVFL) pos[j] = lab[j] < O(0) ? tv[j] > O(0) : lab[j] != O(0);
        else pos[j] = false;
      }
    }
    O pw[kVec], w[kVec];
    load_operand(pos_weight, base, full, O(1), pw);
    load_operand(weight, base, full, O(1), w);
    O s = grad_scale;
    if constexpr (GRAD) {
      if (divisor != nullptr) s = *divisor > 0 ? static_cast<O>(1.0 / *divisor) : O(1);
    }

    math::ClsConfig<O> c = cfg;
    if constexpr (POW >= 0) c.pow_mode = static_cast<math::PowMode>(POW);  // folds the switch
    O acc(0);
    T res[kVec], gres[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      O loss, dx;
      math::cls_element<K, GRAD>(static_cast<O>(xs[j]), tv[j], pw[j], pos[j], c, loss, dx);
      loss = live[j] ? loss * w[j] : O(0);
      res[j] = static_cast<T>(loss);
      if (base + j < n) acc += loss;
      if constexpr (GRAD) gres[j] = static_cast<T>(live[j] ? dx * w[j] * s : O(0));
    }
    if (out != nullptr) store(out, base, full, res);
    if constexpr (GRAD) store(grad, base, full, gres);
    return acc;
  }
};

// The 'mean' divisor of class-index targets, counted on the device (no synchronisation):
// C for every anchor whose label is not ignore_index.
struct CountUnit {
  const int64_t* __restrict__ labels;
  int64_t ignore_index;
  double classes;
  __device__ __forceinline__ double operator()(int64_t u) const {
    return labels[u] != ignore_index ? classes : 0.0;
  }
};

bool operand_aligned(const OperandDesc& d) {
  return !d.full() || aligned16(d.tensor.const_data_ptr());
}

template <typename T, ClsKind K, bool GRAD, bool INDEX, int POW>
void launch(const ClsArgs& a, T* out, T* grad, T* sum_out, const double* divisor) {
  using Unit = ClsUnit<T, K, GRAD, INDEX, POW>;
  using O = typename Unit::O;
  Unit f;
  f.x = a.input.const_data_ptr<T>();
  f.t = INDEX ? nullptr : a.target.const_data_ptr<T>();
  f.labels = INDEX ? a.labels.const_data_ptr<int64_t>() : nullptr;
  f.score = INDEX && a.score.defined() ? a.score.const_data_ptr<T>() : nullptr;
  f.classes = a.classes;
  f.ignore_index = a.ignore_index;
  f.class_major = a.class_major;
  f.inner = a.inner;
  f.weight = a.weight.typed<T>();
  f.pos_weight = a.pos_weight.typed<T>();
  f.label = a.label.typed<uint8_t>();
  f.out = out;
  f.grad = grad;
  f.n = a.numel();
  f.cfg = a.config<O>();
  f.divisor = divisor;
  f.grad_scale = divisor != nullptr ? O(1) : reduction_scale<O>(a.reduction, f.n);
  // label holds kVec bytes per unit: its full loads need kVec-byte alignment
  const bool label_ok = !a.label.full() ||
                        reinterpret_cast<uintptr_t>(a.label.tensor.const_data_ptr()) % Unit::kVec == 0;
  f.vec_ok = aligned16(f.x) && (INDEX || aligned16(f.t)) && (out == nullptr || aligned16(out)) &&
             (grad == nullptr || aligned16(grad)) && operand_aligned(a.weight) &&
             operand_aligned(a.pos_weight) && label_ok;
  const int64_t units = ceil_div(f.n, Unit::kVec);
  launch_map_reduce<O, T>(units, f, sum_out, divisor != nullptr ? O(1) : f.grad_scale,
                          a.input.device(), divisor);
}

// gamma = 2 (the default of focal, QFL and VFL) gets straight-line code in fp32, the type
// every loss runs in under autocast: the per-element PowMode switch costs branches and
// blocks scheduling across the unit's elements in these compute-bound kernels.
template <typename T, ClsKind K, bool GRAD, bool INDEX>
void launch_pow(const ClsArgs& a, T* out, T* grad, T* sum_out, const double* divisor) {
  if constexpr (std::is_same_v<T, float> && K != ClsKind::kBCE) {
    if (a.config<float>().pow_mode == math::PowMode::kTwo)
      return launch<T, K, GRAD, INDEX, static_cast<int>(math::PowMode::kTwo)>(a, out, grad,
                                                                              sum_out, divisor);
  }
  return launch<T, K, GRAD, INDEX, -1>(a, out, grad, sum_out, divisor);
}

template <typename T, bool GRAD, bool INDEX>
void launch_kind(const ClsArgs& a, T* out, T* grad, T* sum_out, const double* divisor) {
  switch (a.kind) {
    case ClsKind::kFocal: return launch_pow<T, ClsKind::kFocal, GRAD, INDEX>(a, out, grad, sum_out, divisor);
    case ClsKind::kQFL: return launch_pow<T, ClsKind::kQFL, GRAD, INDEX>(a, out, grad, sum_out, divisor);
    case ClsKind::kVFL: return launch_pow<T, ClsKind::kVFL, GRAD, INDEX>(a, out, grad, sum_out, divisor);
    default: return launch_pow<T, ClsKind::kBCE, GRAD, INDEX>(a, out, grad, sum_out, divisor);
  }
}

// Runs the loss (and with `grad`, the gradient) kernel of the right kind and target form.
// The 'mean' divisor of class-index targets is counted first, on the device.
template <typename T, bool GRAD>
void run(const ClsArgs& a, T* out, T* grad, T* sum_out) {
  if (!a.index) return launch_kind<T, GRAD, false>(a, out, grad, sum_out, nullptr);
  at::Tensor divisor;
  const double* d = nullptr;
  if (a.reduction == Reduction::kMean && (sum_out != nullptr || GRAD)) {
    divisor = at::empty({}, a.input.options().dtype(at::kDouble));
    d = divisor.mutable_data_ptr<double>();
    launch_map_reduce<double, double>(a.labels.numel(),
                                      CountUnit{a.labels.const_data_ptr<int64_t>(),
                                                a.ignore_index, static_cast<double>(a.classes)},
                                      divisor.mutable_data_ptr<double>(), 1.0, a.input.device());
  }
  launch_kind<T, GRAD, true>(a, out, grad, sum_out, d);
}

}  // namespace
}  // namespace cuda

at::Tensor cls_forward_cuda(const ClsArgs& a) {
  const c10::cuda::CUDAGuard guard(a.input.device());
  const bool reduce = a.reduction != Reduction::kNone;
  at::Tensor out = reduce ? at::empty({}, a.input.options())
                          : cls_like_input(a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "detloss_cls_forward_cuda", [&] {
    scalar_t* p = out.mutable_data_ptr<scalar_t>();
    cuda::run<scalar_t, false>(a, reduce ? nullptr : p, nullptr, reduce ? p : nullptr);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> cls_forward_grad_cuda(const ClsArgs& a, bool with_loss) {
  const c10::cuda::CUDAGuard guard(a.input.device());
  const bool reduce = a.reduction != Reduction::kNone;
  at::Tensor out;
  if (with_loss) out = reduce ? at::empty({}, a.input.options()) : cls_like_input(a);
  at::Tensor grad = cls_like_input(a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.input.scalar_type(),
                                  "detloss_cls_forward_grad_cuda", [&] {
    scalar_t* p = with_loss ? out.mutable_data_ptr<scalar_t>() : nullptr;
    cuda::run<scalar_t, true>(a, reduce ? nullptr : p, grad.mutable_data_ptr<scalar_t>(),
                              reduce ? p : nullptr);
  });
  return {out, grad};
}

namespace {
// scale_by_upstream's CUDA path (ops/common.cpp), set when the extension loads
void scale_in_place_cuda(at::Tensor& g, const at::Tensor& up) {
  const c10::cuda::CUDAGuard guard(g.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "detloss_scale_in_place_cuda", [&] {
    cuda::scale_in_place<scalar_t>(g.mutable_data_ptr<scalar_t>(), g.numel(),
                                   up.const_data_ptr<scalar_t>(), g.device());
  });
}
[[maybe_unused]] const bool registered = (set_cuda_scale_in_place(&scale_in_place_cuda), true);
}  // namespace

}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, DETLOSS_CUDA_KEY, m) {
  m.impl("cls_loss", &detloss::cls_loss_entry<detloss::cls_forward_cuda>);
  m.impl("cls_loss_with_grad", &detloss::cls_loss_with_grad_entry<detloss::cls_forward_grad_cuda>);
  m.impl("cls_backward", &detloss::cls_backward_entry<detloss::cls_forward_grad_cuda>);
}
