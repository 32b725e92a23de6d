#include "common.h"

#include <c10/util/Exception.h>

#include <vector>

namespace detloss {

Reduction parse_reduction(std::string_view reduction, const char* op) {
  if (reduction == "none") return Reduction::kNone;
  if (reduction == "mean") return Reduction::kMean;
  if (reduction == "sum") return Reduction::kSum;
  TORCH_CHECK_VALUE(false, op, ": reduction must be one of 'none', 'mean', 'sum', got '",
                    std::string(reduction), "'");
}

void check_floating(const at::Tensor& t, const char* arg, const char* op) {
  const auto s = t.scalar_type();
  TORCH_CHECK_TYPE(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16,
                   op, ": ", arg, " must be a floating tensor (float32, float64, float16 or ",
                   "bfloat16), got ", s);
}

void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* arg,
                       const char* ref_arg, const char* op) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", arg, " is on ", t.device(), " but ",
                    ref_arg, " is on ", ref.device(), "; all tensors must be on one device");
}

OperandDesc describe_operand(const std::optional<at::Tensor>& maybe, at::IntArrayRef shape,
                             at::ScalarType dtype, const char* arg, const char* op) {
  OperandDesc d;
  if (!maybe.has_value() || !maybe->defined()) return d;
  const at::Tensor& t = *maybe;

  // Broadcastable *to* the loss shape: the loss never grows to the operand's shape.
  const int64_t nd = static_cast<int64_t>(shape.size());
  bool ok = t.dim() <= nd;
  for (int64_t k = 1; ok && k <= t.dim(); ++k) {
    const int64_t s = t.size(t.dim() - k);
    ok = s == 1 || s == shape[nd - k];
  }
  TORCH_CHECK_VALUE(ok, op, ": ", arg, " of shape ", t.sizes(),
                    " is not broadcastable to the loss shape ", shape);

  const at::Tensor e = (t.scalar_type() == dtype ? t : t.to(dtype)).expand(shape);
  const at::IntArrayRef st = e.strides();

  // Dims that actually advance through memory: size > 1 and stride != 0.
  std::vector<int64_t> live;
  for (int64_t k = 0; k < nd; ++k)
    if (shape[k] > 1 && st[k] != 0) live.push_back(k);

  if (live.empty()) {  // a single value (also covers an empty loss)
    d.tensor = e;
    d.mode = OperandMode::kScalar;
    return d;
  }
  const int64_t a = live.front(), b = live.back() + 1;
  bool in_place = true;
  int64_t expect = 1;
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
    d.tensor = e;
    d.inner = inner;
    d.mid = mid;
    d.mode = (inner == 1 && mid == n) ? OperandMode::kFull : OperandMode::kBroadcast;
    return d;
  }
  d.tensor = e.contiguous();
  d.mode = OperandMode::kFull;
  return d;
}

}  // namespace detloss
