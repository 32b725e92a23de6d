#include "common.h"

#include <ATen/TensorSubclassLikeUtils.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <vector>

namespace detloss {

Reduction parse_reduction(std::string_view reduction, const char* op) {
  if (reduction == "none") return Reduction::kNone;
  if (reduction == "mean") return Reduction::kMean;
  if (reduction == "sum") return Reduction::kSum;
  TORCH_CHECK_VALUE(false, op, ": reduction must be one of 'none', 'mean', 'sum', got '",
                    std::string(reduction), "'");
}

namespace {
ScaleInPlaceFn cuda_scale_in_place = nullptr;
}  // namespace

void set_cuda_scale_in_place(ScaleInPlaceFn fn) { cuda_scale_in_place = fn; }

at::Tensor scale_by_upstream(at::Tensor g, const at::Tensor& up, Reduction reduction, bool rows,
                             bool in_place) {
  const bool plain = !at::isTensorSubclassLike(up) && !at::isTensorSubclassLike(g);
  at::Tensor u = up.scalar_type() == g.scalar_type() ? up : up.to(g.scalar_type());
  if (reduction != Reduction::kNone) {
    if (!in_place || !plain) return g.mul(u);
    if (g.device().type() == c10::DeviceType::DETLOSS_CUDA_KEY && cuda_scale_in_place != nullptr &&
        u.device() == g.device() && u.dim() == 0 && g.is_non_overlapping_and_dense()) {
      cuda_scale_in_place(g, u);
      return g;
    }
    if (g.device().is_cpu()) return up.item<double>() == 1.0 ? g : g.mul_(u);
    return g.mul_(u);
  }
  if (rows) u = u.unsqueeze(-1);
  return in_place && plain ? g.mul_(u) : g.mul(u);
}

void check_representable(double v, at::ScalarType input_dtype, const char* arg, const char* op) {
  if (input_dtype == at::kDouble || !std::isfinite(v)) return;  // (non-finite: the caller's check)
  TORCH_CHECK_VALUE(std::fabs(v) <= static_cast<double>(std::numeric_limits<float>::max()), op,
                    ": ", arg, " = ", v, " is beyond float32's range (|", arg, "| <= 3.4e38), the "
                    "arithmetic of ", input_dtype, " inputs");
}

void check_floating(const at::Tensor& t, const char* arg, const char* op) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(is_floating(s), op, ": ", arg, " must be a floating tensor (float32, float64, float16 or ",
                   "bfloat16), got ", s);
}

void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* arg,
                       const char* ref_arg, const char* op) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", arg, " is on ", t.device(), " but ",
                    ref_arg, " is on ", ref.device(), "; all tensors must be on one device");
}

namespace {

// `lead` holds the leading dims of the operand, already cast to its dtype; its strides count
// elements, and a row is `row` contiguous elements.
OperandDesc describe_leading(const at::Tensor& owner, const at::Tensor& lead,
                             at::IntArrayRef shape, int64_t row, const char* arg,
                             const char* op) {
  const int64_t nd = static_cast<int64_t>(shape.size());
  bool ok = lead.dim() <= nd;
  for (int64_t k = 1; ok && k <= lead.dim(); ++k) {
    const int64_t s = lead.size(lead.dim() - k);
    ok = s == 1 || s == shape[nd - k];
  }
  if (row == 1) {
    TORCH_CHECK_VALUE(ok, op, ": ", arg, " of shape ", owner.sizes(),
                      " is not broadcastable to the loss shape ", shape);
  } else {
    TORCH_CHECK_VALUE(ok, op, ": ", arg, " of shape ", owner.sizes(), " has leading dims ",
                      lead.sizes(), " that do not broadcast to ", shape);
  }
  const at::Tensor e = lead.expand(shape);
  const at::IntArrayRef st = e.strides();

  OperandDesc d;
  // Dims that actually advance through memory: size > 1 and stride != 0.
  std::vector<int64_t> live;
  for (int64_t k = 0; k < nd; ++k)
    if (shape[k] > 1 && st[k] != 0) live.push_back(k);
  if (live.empty()) {  // a single value or row (also covers an empty loss)
    d.tensor = owner;
    d.mode = OperandMode::kScalar;
    return d;
  }
  const int64_t a = live.front(), b = live.back() + 1;
  bool in_place = true;
  int64_t expect = row;
  for (int64_t k = b - 1; k >= a && in_place; --k) {
    if (shape[k] == 1) continue;
    in_place = st[k] == expect;  // contiguous inside the block, no broadcast hole
    expect *= shape[k];
  }
  if (in_place) {
    int64_t inner = 1, mid = 1, n = 1;
    for (int64_t k = 0; k < nd; ++k) {
      n *= shape[k];
      if (k >= b) inner *= shape[k];
      else if (k >= a) mid *= shape[k];
    }
    d.tensor = owner;
    d.inner = inner;
    d.mid = mid;
    d.mode = (inner == 1 && mid == n) ? OperandMode::kFull : OperandMode::kBroadcast;
    return d;
  }
  // materialise: [shape..., row] contiguous
  std::vector<int64_t> full(shape.begin(), shape.end());
  if (row > 1) full.push_back(row);
  d.tensor = row > 1 ? owner.expand(full).contiguous() : e.contiguous();
  d.mode = OperandMode::kFull;
  return d;
}

}  // namespace

// The descriptor's tensor must start at the operand's first element: `owner` (or a view
// that shares its data pointer) is what typed() reads.
OperandDesc describe_operand(const std::optional<at::Tensor>& maybe, at::IntArrayRef shape,
                             at::ScalarType dtype, const char* arg, const char* op) {
  if (!maybe.has_value() || !maybe->defined()) return OperandDesc();
  const at::Tensor t = maybe->scalar_type() == dtype ? *maybe : maybe->to(dtype);
  return describe_leading(t, t, shape, 1, arg, op);
}

OperandDesc describe_rows(const at::Tensor& t0, at::IntArrayRef shape, int64_t row,
                          at::ScalarType dtype, const char* arg, const char* op) {
  TORCH_CHECK_VALUE(t0.dim() >= 1 && t0.size(-1) == row, op, ": ", arg, " must have shape [..., ",
                    row, "], got ", t0.sizes());
  at::Tensor t = t0.scalar_type() == dtype ? t0 : t0.to(dtype);
  if (t.stride(-1) != 1 && t.size(-1) > 1) t = t.contiguous();
  return describe_leading(t, t.select(-1, 0), shape, row, arg, op);
}

}  // namespace detloss
