// Schemas of the mask family and the validation shared by CPU and CUDA (autograd:
// csrc/ops/autograd.cpp; autocast: csrc/ops/autocast.cpp).
#include "mask.h"

#include <ATen/ExpandUtils.h>  // at::is_expandable_to
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <c10/util/accumulate.h>

#include <limits>

namespace detloss {
namespace {

bool is_index(const at::Tensor& t) {
  return t.scalar_type() == at::kLong || t.scalar_type() == at::kInt;
}

}  // namespace

MaskArgs prepare_mask(const at::Tensor& coef, const at::Tensor& proto,
                      const at::Tensor& batch_index, const at::Tensor& boxes,
                      const at::Tensor& area, const at::Tensor& masks,
                      const at::Tensor& mask_index, bool overlap, std::string_view reduction,
                      const std::optional<at::Tensor>& positive, const char* op) {
  MaskArgs a;
  a.reduction = parse_reduction(reduction, op);
  a.overlap = overlap;
  check_floating(coef, "coef", op);
  TORCH_CHECK_VALUE(coef.dim() >= 1, op, ": coef must have shape [..., nm] (each positive's "
                    "mask coefficients), got a 0-dim tensor");
  a.shape.assign(coef.sizes().begin(), coef.sizes().end() - 1);
  const at::IntArrayRef lead(a.shape);
  a.P = c10::multiply_integers(lead);
  a.nm = coef.size(-1);
  TORCH_CHECK_VALUE(a.nm >= 1 && a.nm <= math::kMaskMaxCoef, op, ": coef's nm (its last dim, "
                    "the number of prototypes) must be in [1, ", math::kMaskMaxCoef, "], got ",
                    coef.sizes());
  TORCH_CHECK_TYPE(proto.scalar_type() == coef.scalar_type(), op, ": proto must have coef's "
                   "dtype ", coef.scalar_type(), ", got ", proto.scalar_type());
  TORCH_CHECK_VALUE(proto.dim() == 4 && proto.size(1) == a.nm, op, ": proto must have shape "
                    "[B, nm, H, W] with nm = ", a.nm, " (coef's last dim), got ", proto.sizes());
  a.B = proto.size(0);
  a.H = proto.size(2);
  a.W = proto.size(3);
  TORCH_CHECK_VALUE(a.H * a.W <= std::numeric_limits<int32_t>::max(), op, ": proto's H·W must "
                    "be below 2^31, got ", proto.sizes());
  for (const auto& [t, name] : {std::pair{&batch_index, "batch_index"}, {&boxes, "boxes"},
                                {&area, "area"}, {&masks, "masks"}, {&mask_index, "mask_index"},
                                {&proto, "proto"}}) {
    check_same_device(*t, coef, name, "coef", op);
  }
  TORCH_CHECK_TYPE(is_index(batch_index), op, ": batch_index must be an int64 or int32 tensor "
                   "(each positive's image), got ", batch_index.scalar_type());
  TORCH_CHECK_VALUE(batch_index.sizes() == lead, op, ": batch_index must have coef's leading "
                    "shape ", lead, " (one per positive), got ", batch_index.sizes());
  TORCH_CHECK_TYPE(is_index(mask_index), op, ": mask_index must be an int64 or int32 tensor, "
                   "got ", mask_index.scalar_type());
  TORCH_CHECK_VALUE(mask_index.sizes() == lead, op, ": mask_index must have coef's leading "
                    "shape ", lead, ", got ", mask_index.sizes());
  check_floating(boxes, "boxes", op);
  TORCH_CHECK_VALUE(boxes.dim() == coef.dim() && boxes.sizes().slice(0, lead.size()) == lead &&
                        boxes.size(-1) == 4,
                    op, ": boxes must have shape [..., 4] with coef's leading shape ", lead,
                    " (xyxy in prototype pixels), got ", boxes.sizes());
  check_floating(area, "area", op);
  TORCH_CHECK_VALUE(area.sizes() == lead, op, ": area must have coef's leading shape ", lead,
                    " (each box's normalised area), got ", area.sizes());
  TORCH_CHECK_TYPE(!masks.is_complex(), op, ": masks must be a real or bool tensor (",
                   overlap ? "instance indices" : "0/1 masks", "), got ", masks.scalar_type());
  TORCH_CHECK_VALUE(masks.dim() == 3 && masks.size(1) == a.H && masks.size(2) == a.W, op,
                    ": masks must have shape [", overlap ? "B" : "N", ", H, W] with H, W = ",
                    a.H, ", ", a.W, " (proto's; ultralytics resizes proto to the masks first), "
                    "got ", masks.sizes());
  TORCH_CHECK_VALUE(!overlap || masks.size(0) == a.B, op, ": masks with overlap=True must hold "
                    "one instance-index map per image, [B, H, W] with B = ", a.B, ", got ",
                    masks.sizes());
  a.G = masks.size(0);
  if (positive.has_value() && positive->defined()) {
    check_same_device(*positive, coef, "positive", "coef", op);
    TORCH_CHECK_TYPE(positive->scalar_type() == at::kBool, op, ": positive must be a bool "
                     "tensor (which entries are positives), got ", positive->scalar_type());
    TORCH_CHECK_VALUE(positive->sizes() == lead, op, ": positive must have coef's leading shape ",
                      lead, ", got ", positive->sizes());
    a.keep = positive->contiguous().view({a.P});
  }
  const auto s = coef.scalar_type();
  const auto o = at::toOpMathType(s);
  const auto as = [&](const at::Tensor& t, at::ScalarType d, int64_t row) {
    const at::Tensor c = (t.scalar_type() == d ? t : t.to(d)).contiguous();
    return row > 0 ? c.view({a.P, row}) : c.view({a.P});
  };
  a.image = as(batch_index, at::kLong, 0);
  a.index = as(mask_index, at::kLong, 0);
  a.boxes = as(boxes, o, 4);
  a.area = as(area, o, 0);
  a.masks = (masks.scalar_type() == o ? masks : masks.to(o)).contiguous();
  a.coef = coef.contiguous().view({a.P, a.nm});
  a.proto = proto.contiguous();
  return a;
}

at::Tensor prepare_mask_grad(const at::Tensor& grad, const MaskArgs& a, const char* op) {
  check_floating(grad, "grad", op);
  check_same_device(grad, a.coef, "grad", "coef", op);
  if (a.reduction != Reduction::kNone) {
    TORCH_CHECK_VALUE(grad.dim() == 0, op, ": grad of a reduced loss must be 0-dim, got shape ",
                      grad.sizes());
    return grad;
  }
  TORCH_CHECK_VALUE(at::is_expandable_to(grad.sizes(), a.shape), op, ": grad of shape ",
                    grad.sizes(), " is not broadcastable to the loss shape ",
                    at::IntArrayRef(a.shape));
  const auto o = at::toOpMathType(a.coef.scalar_type());
  return grad.to(o).expand(a.shape).contiguous().view({a.P});
}

}  // namespace detloss

TORCH_LIBRARY_FRAGMENT(DETLOSS_OPS_NS, m) {
  m.set_python_module("detloss_cuda._ops");
  m.def(
      "prototype_mask_loss(Tensor coef, Tensor proto, Tensor batch_index, Tensor boxes, "
      "Tensor area, Tensor masks, Tensor mask_index, bool overlap, str reduction, "
      "Tensor? positive=None) -> Tensor");
  m.def(
      "prototype_mask_loss_with_grad(Tensor coef, Tensor proto, Tensor batch_index, "
      "Tensor boxes, Tensor area, Tensor masks, Tensor mask_index, bool overlap, "
      "str reduction, Tensor? positive=None) -> (Tensor loss, Tensor grad_coef, "
      "Tensor grad_proto)");
  m.def(
      "prototype_mask_backward(Tensor grad, Tensor coef, Tensor proto, Tensor batch_index, "
      "Tensor boxes, Tensor area, Tensor masks, Tensor mask_index, bool overlap, "
      "str reduction, Tensor? positive=None) -> (Tensor grad_coef, Tensor grad_proto)");
}
