// The prototype mask loss (YOLACT, ultralytics' YOLO segmentation): each positive p has mask
// coefficients c_p [nm]; its mask logit at pixel (y, x) of its image b_p is
//   z_p(y, x) = sum_k c_p[k] · proto[b_p, k, y, x]
// and its loss, ultralytics' single_mask_loss (BCE with logits, crop_mask, mean, / area):
//   loss_p = (sum over the pixels of box_p of bce(z_p, t_p)) / (H·W) / area_p
// where box_p holds the pixels (row, col) with x1 <= col < x2 and y1 <= row < y2 (crop_mask's
// rule on the pixel indices) and t_p is the positive's ground-truth mask. Only those pixels
// are ever computed. Gradients (g = d bce/dz · upstream_p / (H·W) / area_p, at each pixel):
//   d/dc_p[k] = sum_pix g · proto[b_p, k, pix]
//   d/dproto[b, k, pix] = sum over b's positives whose box holds pix of g · c_p[k]
#pragma once

#include "cls.h"

namespace detloss {
namespace math {

constexpr int kMaskMaxCoef = 64;  // nm: ultralytics and YOLACT use 32

inline namespace DETLOSS_CAPABILITY_NS {

// The BCE of one pixel and, when GRAD, d/dz (the classification family's stable form).
template <bool GRAD, class S>
DETLOSS_HD void mask_pixel(S z, S t, S& loss, S& dz) {
  ClsConfig<S> cfg{S(0), S(0), false, PowMode::kZero};
  cls_element<ClsKind::kBCE, GRAD, S, bool, S>(z, t, S(1), false, cfg, loss, dz);
}

// The positive's gradient scale: upstream / (H·W) / area, in ultralytics' order (the mean's
// divisor, then the area). Where it is not finite (a zero or NaN area), ultralytics' gradient
// at a pixel outside the box is scale · d · 0 = NaN (crop_mask multiplies by 0): the fused
// kernels give NaN there too (mask_poisons) — to the positive's coefficients unless its box
// covers the whole image, and to its image's prototypes at every pixel outside its box.
// Inside the box the gradient is d · scale, as ultralytics'.
template <class S>
DETLOSS_HD S mask_scale(S up, int64_t hw, S area) {
  return up / static_cast<S>(hw) / area;
}
template <class S>
DETLOSS_HD bool mask_poisons(S scale) {
  return !(scale - scale == S(0));  // inf or NaN
}

}  // namespace DETLOSS_CAPABILITY_NS
}  // namespace math
}  // namespace detloss
