// Schemas of the distribution family and the validation shared by CPU and CUDA (autograd:
// csrc/ops/autograd.cpp; autocast: csrc/ops/autocast.cpp).
#include "dfl.h"

#include <ATen/ExpandUtils.h>  // at::is_expandable_to
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <string>

namespace detloss {

DflArgs prepare_dfl(const at::Tensor& pred, const std::optional<at::Tensor>& target,
                    const std::optional<at::Tensor>& weight, std::string_view reduction,
                    const char* op, bool keep_bin_major) {
  DflArgs a;
  a.reduction = parse_reduction(reduction, op);
  const auto s = pred.scalar_type();
  TORCH_CHECK_TYPE(is_floating(s), op, ": pred must be a floating tensor of bin logits (float32, float64, "
                   "float16 or bfloat16), got ", s);
  TORCH_CHECK_VALUE(pred.dim() >= 1, op, ": pred must have shape [..., R] (R bins), got a 0-dim "
                    "tensor");
  const int64_t bins = pred.size(-1);
  TORCH_CHECK_VALUE(bins >= 2, op, ": DFL needs at least 2 bins, got pred of shape ",
                    pred.sizes());
  TORCH_CHECK_VALUE(bins <= math::kDflMaxBins, op, ": pred's last dim holds the bins, at most ",
                    math::kDflMaxBins, " are supported, got pred of shape ", pred.sizes());
  a.bins = static_cast<int32_t>(bins);
  a.shape.assign(pred.sizes().begin(), pred.sizes().end() - 1);
  a.rows = pred.numel() / bins;
  if (target.has_value()) {
    const at::Tensor& t = *target;
    check_same_device(t, pred, "target", "pred", op);
    TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()) ||
                         at::isIntegralType(t.scalar_type(), /*includeBool=*/false),
                     op, ": target must be a real tensor of distances in bins, got ",
                     t.scalar_type());
    // [..., 2]: (left bin, right bin's weight) per row, the weights given (math/dfl.h)
    std::vector<int64_t> split_shape(a.shape);
    split_shape.push_back(2);
    a.split = t.sizes() == at::IntArrayRef(split_shape);
    TORCH_CHECK_VALUE(a.split || t.sizes() == at::IntArrayRef(a.shape), op, ": target of shape ",
                      t.sizes(), " must have the leading shape of pred ", pred.sizes(), ", i.e. ",
                      at::IntArrayRef(a.shape), " (distances in bins), or that and 2 (each row's "
                      "left bin and right bin's weight)");
    // targets stay in opmath (float32 for half/bf16 logits): their fraction is the weight
    const auto tt = at::toOpMathType(s);
    a.target = (t.scalar_type() == tt ? t : t.to(tt)).contiguous();
  }
  if (weight.has_value() && weight->defined()) {
    check_floating(*weight, "weight", op);
    check_same_device(*weight, pred, "weight", "pred", op);
  }
  a.weight = describe_operand(weight, a.shape, s, "weight", op);
  // last: every argument checked before pred is copied (an expanded pred of 2^31 rows with a
  // wrong target would otherwise allocate 137 GB before the shape error)
  a.pred = keep_bin_major && dfl_bin_major_dim(pred) >= 0 ? pred : pred.contiguous();
  return a;
}

void check_dfl_stats(const at::Tensor& stats, DflArgs& a, int64_t per_row, const char* op) {
  const auto tt = at::toOpMathType(a.pred.scalar_type());
  std::vector<int64_t> want(a.shape);
  if (per_row > 1) want.push_back(per_row);
  TORCH_CHECK_VALUE(stats.scalar_type() == tt && stats.sizes() == at::IntArrayRef(want), op,
                    ": stats (the saved statistics) must be ", tt, " of shape ", at::IntArrayRef(want),
                    " (what the forward returned), got ", stats.scalar_type(), " ",
                    stats.sizes());
  check_same_device(stats, a.pred, "stats", "pred", op);
  a.stats = stats.contiguous();
}

void check_dfl_grad(const at::Tensor& grad, const DflArgs& a, const char* op) {
  check_floating(grad, "grad", op);
  check_same_device(grad, a.pred, "grad", "pred", op);
  if (a.reduction != Reduction::kNone) {
    TORCH_CHECK_VALUE(grad.dim() == 0, op, ": grad of a reduced loss must be 0-dim, got shape ",
                      grad.sizes());
  } else {
    TORCH_CHECK_VALUE(at::is_expandable_to(grad.sizes(), a.shape), op, ": grad of shape ",
                      grad.sizes(), " is not broadcastable to the loss shape ",
                      at::IntArrayRef(a.shape));
  }
}

OperandDesc prepare_dfl_grad(const at::Tensor& grad, const DflArgs& a, const char* op) {
  check_dfl_grad(grad, a, op);
  return describe_operand(grad, a.shape, a.pred.scalar_type(), "grad", op);
}

DflKlArgs prepare_dfl_kl(const at::Tensor& pred, const at::Tensor& teacher, double temperature,
                         const char* op) {
  DflKlArgs a;
  const auto s = pred.scalar_type();
  TORCH_CHECK_TYPE(is_floating(s), op, ": pred must be a floating tensor of bin logits (float32, "
                   "float64, float16 or bfloat16), got ", s);
  TORCH_CHECK_VALUE(pred.dim() >= 1 && pred.size(-1) >= 2 && pred.size(-1) <= math::kDflMaxBins,
                    op, ": pred must have shape [..., R] with 2 <= R <= ", math::kDflMaxBins,
                    " bins, got ", pred.sizes());
  check_floating(teacher, "teacher", op);
  check_same_device(teacher, pred, "teacher", "pred", op);
  TORCH_CHECK_VALUE(teacher.sizes() == pred.sizes(), op, ": teacher (the teacher's bin logits) "
                    "must have pred's shape ", pred.sizes(), ", got ", teacher.sizes());
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, op,
                    ": temperature must be a finite number > 0, got ", temperature);
  check_representable(temperature, at::toOpMathType(s), "temperature", op);
  a.bins = static_cast<int32_t>(pred.size(-1));
  a.shape.assign(pred.sizes().begin(), pred.sizes().end() - 1);
  a.rows = pred.numel() / a.bins;
  a.temperature = temperature;
  a.teacher = (teacher.scalar_type() == s ? teacher : teacher.to(s)).contiguous();
  a.pred = pred.contiguous();
  return a;
}

void prepare_dfl_kl_backward(DflKlArgs& a, const at::Tensor& grad, const at::Tensor& stats,
                             const char* op) {
  check_floating(grad, "grad", op);
  check_same_device(grad, a.pred, "grad", "pred", op);
  TORCH_CHECK_VALUE(at::is_expandable_to(grad.sizes(), a.shape), op, ": grad of shape ",
                    grad.sizes(), " is not broadcastable to the loss shape ",
                    at::IntArrayRef(a.shape));
  const auto tt = at::toOpMathType(a.pred.scalar_type());
  std::vector<int64_t> want(a.shape);
  want.push_back(2);
  TORCH_CHECK_VALUE(stats.scalar_type() == tt && stats.sizes() == at::IntArrayRef(want), op,
                    ": stats (the saved statistics) must be ", tt, " of shape ",
                    at::IntArrayRef(want), " (what the forward returned), got ",
                    stats.scalar_type(), " ", stats.sizes());
  check_same_device(stats, a.pred, "stats", "pred", op);
  a.stats = stats.contiguous();
  a.grad = grad.to(a.pred.scalar_type()).expand(a.shape).contiguous();
}

}  // namespace detloss

TORCH_LIBRARY_FRAGMENT(DETLOSS_OPS_NS, m) {
  m.set_python_module("detloss_cuda._ops");
  // The forwards also return per-row statistics (opmath) that make the backward one pass.
  m.def(
      "dfl_loss(Tensor pred, Tensor target, Tensor? weight, str reduction) "
      "-> (Tensor loss, Tensor stats)");
  m.def(
      "dfl_backward(Tensor grad, Tensor pred, Tensor target, Tensor stats, Tensor? weight, "
      "str reduction) -> Tensor");
  m.def(
      "dfl_loss_with_grad(Tensor pred, Tensor target, Tensor? weight, str reduction) "
      "-> (Tensor loss, Tensor stats, Tensor grad)");
  m.def("dfl_integral(Tensor pred) -> (Tensor integral, Tensor stats)");
  m.def("dfl_integral_backward(Tensor grad, Tensor pred, Tensor stats) -> Tensor");
  // the distillation KL per row (D-FINE's DDF) and its per-row (lse of pred/T, lse of teacher/T)
  m.def("dfl_kl(Tensor pred, Tensor teacher, float temperature) -> (Tensor loss, Tensor stats)");
  m.def(
      "dfl_kl_backward(Tensor grad, Tensor pred, Tensor teacher, Tensor stats, "
      "float temperature) -> Tensor");
}
