// CPU kernels of the distribution family: output allocation, deterministic chunking,
// parallelism; the vectorised loops are in dfl_vec.h, chosen per CPU at run time.
#include "dfl_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_strided.h>
#include <torch/library.h>

#include "../ops/dfl.h"
#include "parallel.h"

namespace detloss {
namespace cpu {
namespace {

int64_t rows_per_chunk(int32_t bins) { return std::max<int64_t>(64, kChunk / bins); }


template <typename T>
DflLoopArgs<T> loop_args(const DflArgs& a, bool integral) {
  DflLoopArgs<T> la;
  la.pred = a.pred.const_data_ptr<T>();
  if (!integral) la.target = a.target.const_data_ptr<at::opmath_type<T>>();
  la.split = a.split;
  la.weight = a.weight.typed<T>();
  la.bins = a.bins;
  la.integral = integral;
  return la;
}

// ---- the integral on a bin-major pred (csrc/ops/dfl.h, dfl_bin_major_dim): tiles of
// kTile rows along the unit-stride dim, whose bins the vector loops read as columns (W rows
// a vector, no transposition); results go to their rows, the gradient takes pred's strides.
constexpr int64_t kTile = 256;

struct BinMajor {
  int64_t lanes = 0, lane_rows = 0, bin_stride = 0, outer = 0, tiles = 0;
  std::vector<int64_t> sizes, pred_strides, row_strides;  // the other leading dims
};

BinMajor bin_major_plan(const at::Tensor& p) {
  BinMajor m;
  const int64_t d = dfl_bin_major_dim(p), n = p.dim() - 1;
  std::vector<int64_t> rstride(n, 1);  // of the contiguous [leading dims] result
  for (int64_t i = n - 2; i >= 0; --i) rstride[i] = rstride[i + 1] * p.size(i + 1);
  m.lanes = p.size(d);
  m.lane_rows = rstride[d];
  m.bin_stride = p.stride(-1);
  m.outer = 1;
  for (int64_t i = 0; i < n; ++i) {
    if (i == d) continue;
    m.sizes.push_back(p.size(i));
    m.pred_strides.push_back(p.stride(i));
    m.row_strides.push_back(rstride[i]);
    m.outer *= p.size(i);
  }
  m.tiles = (m.lanes + kTile - 1) / kTile;
  return m;
}

// For every tile: f(pred offset of its first lane, result row of its first lane, lanes).
template <typename F>
void for_each_tile(const BinMajor& m, const F& f) {
  at::parallel_for(0, m.outer * m.tiles, 1, [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      int64_t o = task / m.tiles, poff = 0, roff = 0;
      const int64_t a0 = (task % m.tiles) * kTile;
      for (int64_t i = static_cast<int64_t>(m.sizes.size()) - 1; i >= 0; --i) {
        const int64_t idx = o % m.sizes[i];
        o /= m.sizes[i];
        poff += idx * m.pred_strides[i];
        roff += idx * m.row_strides[i];
      }
      f(poff + a0, roff + a0 * m.lane_rows, std::min(kTile, m.lanes - a0));
    }
  });
}

template <typename T>
void integral_bin_major_forward(const DflArgs& a, DflLoopArgs<T> la, T* out,
                                at::opmath_type<T>* stats) {
  using O = at::opmath_type<T>;
  const BinMajor m = bin_major_plan(a.pred);
  const T* base = a.pred.const_data_ptr<T>();
  for_each_tile(m, [&](int64_t poff, int64_t row0, int64_t n) {
    T o[kTile];
    O st[2 * kTile];
    DflLoopArgs<T> lt = la;
    lt.pred = base + poff;  // the tile's rows 0..n, bins bin_stride apart
    lt.bin_stride = m.bin_stride;
    lt.out = o;
    lt.stats_out = st;
    DETLOSS_CPU_DISPATCH(dfl_forward_rows, lt, 0, n);
    for (int64_t t = 0; t < n; ++t) {
      const int64_t row = row0 + t * m.lane_rows;
      out[row] = o[t];
      stats[2 * row] = st[2 * t];
      stats[2 * row + 1] = st[2 * t + 1];
    }
  });
}

template <typename T>
void integral_bin_major_backward(const DflArgs& a, DflLoopArgs<T> la, T* gz) {
  using O = at::opmath_type<T>;
  const BinMajor m = bin_major_plan(a.pred);
  const T* base = a.pred.const_data_ptr<T>();
  const O* stats = a.stats.const_data_ptr<O>();
  const Operand<T> up = la.grad;
  for_each_tile(m, [&](int64_t poff, int64_t row0, int64_t n) {
    T u[kTile];
    O st[2 * kTile];
    for (int64_t t = 0; t < n; ++t) {
      const int64_t row = row0 + t * m.lane_rows;
      u[t] = up.ptr[math::operand_index(up, row)];
      st[2 * t] = stats[2 * row];
      st[2 * t + 1] = stats[2 * row + 1];
    }
    DflLoopArgs<T> lt = la;
    lt.pred = base + poff;
    lt.out = gz + poff;  // gz has pred's strides
    lt.bin_stride = m.bin_stride;
    lt.grad = Operand<T>{u, 1, 1, OperandMode::kFull};
    lt.stats = st;
    DETLOSS_CPU_DISPATCH(dfl_backward_rows, lt, 0, n);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const DflArgs& a, bool integral,
                                                       bool with_grad) {
  const bool reduce = !integral && a.reduction != Reduction::kNone;
  at::Tensor out = reduce ? at::empty({}, a.pred.options()) : at::empty(a.shape, a.pred.options());
  std::vector<int64_t> sshape(a.shape);
  sshape.push_back(2);
  at::Tensor stats =
      at::empty(sshape, a.pred.options().dtype(at::toOpMathType(a.pred.scalar_type())));
  at::Tensor grad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.pred.scalar_type(),
                                  "detloss_dfl_forward_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    DflLoopArgs<scalar_t> la = loop_args<scalar_t>(a, integral);
    la.stats_out = stats.mutable_data_ptr<O>();
    if (with_grad) {
      grad = at::empty(a.pred.sizes(), a.pred.options());
      la.grad_out = grad.mutable_data_ptr<scalar_t>();
      la.grad_scale = reduction_scale<O>(a.reduction, a.rows);
    }
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (integral && !a.pred.is_contiguous()) {  // bin-major: kept only for the integral
      integral_bin_major_forward<scalar_t>(a, la, o, la.stats_out);
      return;
    }
    la.out = reduce ? nullptr : o;
    forward_and_reduce<scalar_t, O>(a.rows, rows_per_chunk(a.bins), reduce,
                                    a.reduction == Reduction::kMean, o,
                                    [&](int64_t b, int64_t e) {
      return DETLOSS_CPU_DISPATCH(dfl_forward_rows, la, b, e);
    });
  });
  return {out, stats, grad};
}

at::Tensor backward(const DflArgs& a, const OperandDesc& grad, bool integral) {
  // pred's own strides: a bin-major pred's gradient in its layout (contiguous otherwise)
  at::Tensor gz = at::empty_strided(a.pred.sizes(), a.pred.strides(), a.pred.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.pred.scalar_type(),
                                  "detloss_dfl_backward_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    DflLoopArgs<scalar_t> la = loop_args<scalar_t>(a, integral);
    la.grad = grad.typed<scalar_t>();
    la.grad_scale = integral ? O(1) : reduction_scale<O>(a.reduction, a.rows);
    la.stats = a.stats.const_data_ptr<O>();
    if (integral && !a.pred.is_contiguous()) {
      integral_bin_major_backward<scalar_t>(a, la, gz.mutable_data_ptr<scalar_t>());
      return;
    }
    la.out = gz.mutable_data_ptr<scalar_t>();
    chunked_for(a.rows, rows_per_chunk(a.bins), [&](int64_t b, int64_t e) {
      DETLOSS_CPU_DISPATCH(dfl_backward_rows, la, b, e);
    });
  });
  return gz;
}

}  // namespace
}  // namespace cpu

DflPair dfl_forward_cpu(const DflArgs& a) {
  auto [out, stats, grad] = cpu::forward(a, false, false);
  return {out, stats};
}
DflTriple dfl_forward_with_grad_cpu(const DflArgs& a) {
  return cpu::forward(a, false, true);
}
at::Tensor dfl_backward_cpu(const DflArgs& a, const OperandDesc& g) {
  return cpu::backward(a, g, false);
}
DflPair dfl_integral_cpu(const DflArgs& a) {
  auto [out, stats, grad] = cpu::forward(a, true, false);
  return {out, stats};
}
at::Tensor dfl_integral_backward_cpu(const DflArgs& a, const OperandDesc& g) {
  return cpu::backward(a, g, true);
}

// The distillation KL: a row a unit (math::dfl_kl_row), chunks of rows a task.
DflPair dfl_kl_cpu(const DflKlArgs& a) {
  at::Tensor out = at::empty(a.shape, a.pred.options());
  std::vector<int64_t> st(a.shape);
  st.push_back(2);
  at::Tensor stats = at::empty(st, a.pred.options().dtype(at::toOpMathType(a.pred.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.pred.scalar_type(), "detloss_dfl_kl_cpu", [&] {
    using S = at::opmath_type<scalar_t>;
    const scalar_t* z = a.pred.const_data_ptr<scalar_t>();
    const scalar_t* u = a.teacher.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    S* sp = stats.mutable_data_ptr<S>();
    const S temp = static_cast<S>(a.temperature);
    const int32_t R = a.bins;
    at::parallel_for(0, a.rows, cpu::rows_per_chunk(R), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const math::DflKlRow<S> k = math::dfl_kl_row(z + r * R, u + r * R, R, temp);
        o[r] = static_cast<scalar_t>(k.loss);
        sp[2 * r] = k.lse_z;
        sp[2 * r + 1] = k.lse_u;
      }
    });
  });
  return {out, stats};
}

at::Tensor dfl_kl_backward_cpu(const DflKlArgs& a) {
  at::Tensor gz = at::empty(a.pred.sizes(), a.pred.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.pred.scalar_type(), "detloss_dfl_kl_backward_cpu", [&] {
    using S = at::opmath_type<scalar_t>;
    const scalar_t* z = a.pred.const_data_ptr<scalar_t>();
    const scalar_t* u = a.teacher.const_data_ptr<scalar_t>();
    const scalar_t* g = a.grad.const_data_ptr<scalar_t>();
    const S* sp = a.stats.const_data_ptr<S>();
    scalar_t* o = gz.mutable_data_ptr<scalar_t>();
    const S temp = static_cast<S>(a.temperature);
    const int32_t R = a.bins;
    at::parallel_for(0, a.rows, cpu::rows_per_chunk(R), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        math::dfl_kl_row_grad(z + r * R, u + r * R, R, temp, sp[2 * r], sp[2 * r + 1],
                              static_cast<S>(g[r]), o + r * R);
      }
    });
  });
  return gz;
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, CPU, m) {
  m.impl("dfl_kl", &detloss::dfl_kl_entry<detloss::dfl_kl_cpu>);
  m.impl("dfl_kl_backward", &detloss::dfl_kl_backward_entry<detloss::dfl_kl_backward_cpu>);
  m.impl("dfl_loss", &detloss::dfl_loss_entry<detloss::dfl_forward_cpu>);
  m.impl("dfl_loss_with_grad", &detloss::dfl_loss_with_grad_entry<detloss::dfl_forward_with_grad_cpu>);
  m.impl("dfl_backward", &detloss::dfl_backward_entry<detloss::dfl_backward_cpu>);
  // the integral keeps a bin-major pred as it is (no transposing copy)
  m.impl("dfl_integral", &detloss::dfl_integral_entry<detloss::dfl_integral_cpu, true>);
  m.impl("dfl_integral_backward",
         &detloss::dfl_integral_backward_entry<detloss::dfl_integral_backward_cpu, true>);
}
