// Autocast of the loss families, at the AutocastCUDA and AutocastCPU keys: under autocast
// torch runs its own BCE-with-logits, cross-entropy and softmax in float32 (and returns
// float32), so the losses here do too; an fp16 sum over many elements then cannot overflow
// and box coordinates keep their precision. Integer class-index targets are not cast.
#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "box.h"
#include "cls.h"
#include "dfl.h"
#include "mask.h"
#include "protocol.h"

namespace detloss {
namespace {

using protocol::find_op;

template <c10::DeviceType device>
at::Tensor f32(const at::Tensor& t) {
  return at::autocast::cached_cast(at::kFloat, t, device);
}
template <c10::DeviceType device>
std::optional<at::Tensor> f32(const std::optional<at::Tensor>& t) {
  return at::autocast::cached_cast(at::kFloat, t, device);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor cls_loss_autocast(DETLOSS_CLS_PARAMS) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op = find_op<at::Tensor(DETLOSS_CLS_PARAMS)>(DETLOSS_OP("cls_loss"));
  return op.call(f32<device>(input), f32<device>(target), f32<device>(weight),
                 f32<device>(pos_weight), label, kind, alpha, gamma, reduction, f32<device>(score),
                 smoothing, ignore_index);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor box_loss_autocast(const at::Tensor& pred, const at::Tensor& target,
                             const std::optional<at::Tensor>& weight, c10::string_view kind,
                             c10::string_view fmt, double eps, c10::string_view reduction,
                             double floor) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  using Sig = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                         c10::string_view, c10::string_view, double, c10::string_view, double);
  static const auto op = find_op<Sig>(DETLOSS_OP("box_loss"));
  return op.call(f32<device>(pred), f32<device>(target), f32<device>(weight), kind, fmt, eps,
                 reduction, floor);
}

using Pair = std::tuple<at::Tensor, at::Tensor>;

template <c10::DispatchKey key, c10::DeviceType device>
Pair dfl_loss_autocast(const at::Tensor& p, const at::Tensor& t,
                       const std::optional<at::Tensor>& w, c10::string_view r) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  using Sig = Pair(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                   c10::string_view);
  static const auto op = find_op<Sig>(DETLOSS_OP("dfl_loss"));
  return op.call(f32<device>(p), t, f32<device>(w), r);
}

template <c10::DispatchKey key, c10::DeviceType device>
Pair dfl_integral_autocast(const at::Tensor& p) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op = find_op<Pair(const at::Tensor&)>(DETLOSS_OP("dfl_integral"));
  return op.call(f32<device>(p));
}

template <c10::DispatchKey key, c10::DeviceType device>
Pair dfl_kl_autocast(const at::Tensor& p, const at::Tensor& u, double temp) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op =
      find_op<Pair(const at::Tensor&, const at::Tensor&, double)>(DETLOSS_OP("dfl_kl"));
  return op.call(f32<device>(p), f32<device>(u), temp);
}

template <c10::DispatchKey key, c10::DeviceType device>
at::Tensor mask_loss_autocast(DETLOSS_MASK_PARAMS) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  static const auto op =
      find_op<at::Tensor(DETLOSS_MASK_PARAMS)>(DETLOSS_OP("prototype_mask_loss"));
  // the boxes, areas and masks are read in float32 (float64) by the op itself
  return op.call(f32<device>(coef), f32<device>(proto), batch_index, boxes, area, masks,
                 mask_index, overlap, reduction, positive);
}

template <c10::DispatchKey key, c10::DeviceType device>
void register_autocast(torch::Library& m) {
  m.impl("cls_loss", &cls_loss_autocast<key, device>);
  m.impl("box_loss", &box_loss_autocast<key, device>);
  m.impl("dfl_loss", &dfl_loss_autocast<key, device>);
  m.impl("dfl_integral", &dfl_integral_autocast<key, device>);
  m.impl("dfl_kl", &dfl_kl_autocast<key, device>);
  m.impl("prototype_mask_loss", &mask_loss_autocast<key, device>);
}

}  // namespace
}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, AutocastCUDA, m) {
  detloss::register_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>(m);
}

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, AutocastCPU, m) {
  detloss::register_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>(m);
}
