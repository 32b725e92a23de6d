// CPU driver of the prototype mask loss (csrc/math/mask.h): one image per task. An image's
// prototypes are transposed once to [H·W, nm] (a pixel's nm values contiguous) and its
// positives run in order over the pixels of their boxes only: the loss, the coefficients'
// gradient and the prototypes' gradient (summed over the image's positives in that order)
// in one pass. Deterministic whatever the thread count: an image is one task.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "../ops/mask.h"

namespace detloss {
namespace cpu {
namespace {

// z = c · pr over nm values: eight independent partial sums (the compiler vectorises them)
// added in a fixed order.
template <class S>
inline S dot(const S* c, const S* pr, int64_t nm) {
  S acc[8] = {S(0), S(0), S(0), S(0), S(0), S(0), S(0), S(0)};
  int64_t k = 0;
  for (; k + 8 <= nm; k += 8)
    for (int j = 0; j < 8; ++j) acc[j] += c[k + j] * pr[k + j];
  for (int j = 0; k < nm; ++k, ++j) acc[j] += c[k] * pr[k];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

template <class T>
MaskTriple run(const MaskArgs& a, bool grad, const at::Tensor& up) {
  using S = at::opmath_type<T>;
  const int64_t P = a.P, nm = a.nm, B = a.B, W = a.W, HW = a.H * a.W;
  constexpr const char* op = "detloss.prototype_mask_loss";
  const int64_t* img = a.image.const_data_ptr<int64_t>();
  const int64_t* idx = a.index.const_data_ptr<int64_t>();
  // the positives grouped by image, in order (a counting sort); indices checked here, where
  // reading them costs nothing (the CUDA kernels give such a positive a NaN loss instead)
  const bool* keep = a.keep.defined() ? a.keep.const_data_ptr<bool>() : nullptr;
  std::vector<int64_t> off(B + 1, 0), order;
  int64_t count = 0;  // the positives: 'mean' divides by their number
  for (int64_t p = 0; p < P; ++p) {
    if (keep && !keep[p]) continue;  // not a positive: its indices are not read
    ++count;
    TORCH_CHECK_INDEX(img[p] >= 0 && img[p] < B, op, ": batch_index[", p, "] = ", img[p],
                      " is not an image of proto (B = ", B, ")");
    TORCH_CHECK_INDEX(a.overlap || (idx[p] >= 0 && idx[p] < a.G), op, ": mask_index[", p,
                      "] = ", idx[p], " is not a row of masks (N = ", a.G, ")");
    ++off[img[p] + 1];
  }
  for (int64_t b = 0; b < B; ++b) off[b + 1] += off[b];
  order.resize(count);
  {
    std::vector<int64_t> at(off.begin(), off.end() - 1);
    for (int64_t p = 0; p < P; ++p)
      if (!keep || keep[p]) order[at[img[p]]++] = p;
  }
  const S red = reduction_scale<S>(a.reduction, count);
  const S* ups = up.defined() ? up.const_data_ptr<S>() : nullptr;
  const S* boxes = a.boxes.const_data_ptr<S>();
  const S* area = a.area.const_data_ptr<S>();
  const S* masks = a.masks.const_data_ptr<S>();
  const T* coef = a.coef.const_data_ptr<T>();
  const T* proto = a.proto.const_data_ptr<T>();
  std::vector<S> losses(P, S(0));
  at::Tensor gc, gp;
  T* gcp = nullptr;
  T* gpp = nullptr;
  if (grad) {
    // (zero: the rows of entries that are not positives)
    gc = count < P ? at::zeros_like(a.coef) : at::empty_like(a.coef);
    gp = at::empty_like(a.proto);
    gcp = gc.mutable_data_ptr<T>();
    gpp = gp.mutable_data_ptr<T>();
  }
  const S nan = std::numeric_limits<S>::quiet_NaN();

  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<S> pt, dpt, c(nm), dc(nm);
    for (int64_t b = b0; b < b1; ++b) {
      T* gpb = grad ? gpp + b * nm * HW : nullptr;
      if (off[b] == off[b + 1]) {
        if (grad) std::fill(gpb, gpb + nm * HW, T(0));
        continue;
      }
      pt.resize(HW * nm);
      const T* pb = proto + b * nm * HW;
      for (int64_t k = 0; k < nm; ++k)
        for (int64_t i = 0; i < HW; ++i) pt[i * nm + k] = static_cast<S>(pb[k * HW + i]);
      if (grad) dpt.assign(HW * nm, S(0));
      for (int64_t j = off[b]; j < off[b + 1]; ++j) {
        const int64_t p = order[j];
        for (int64_t k = 0; k < nm; ++k) c[k] = static_cast<S>(coef[p * nm + k]);
        if (grad) std::fill(dc.begin(), dc.end(), S(0));
        const S* bx = boxes + 4 * p;
        int64_t x0, x1, y0, y1;
        math::mask_span(bx[0], bx[2], W, x0, x1);
        math::mask_span(bx[1], bx[3], a.H, y0, y1);
        const S scale = math::mask_scale((ups ? ups[p] : S(1)) * red, HW, area[p]);
        const S* plane = masks + (a.overlap ? b : idx[p]) * HW;
        const S value = static_cast<S>(idx[p] + 1);
        double sum = 0;
        for (int64_t y = y0; y < y1; ++y) {
          for (int64_t x = x0; x < x1; ++x) {
            const int64_t pix = y * W + x;
            const S* pr = pt.data() + pix * nm;
            const S z = dot(c.data(), pr, nm);
            const S t = a.overlap ? (plane[pix] == value ? S(1) : S(0)) : plane[pix];
            S l, d = S(0);
            if (grad) {
              math::mask_pixel<true>(z, t, l, d);
            } else {
              math::mask_pixel<false>(z, t, l, d);
            }
            sum += static_cast<double>(l);
            if (grad) {
              const S g = d * scale;
              S* dp = dpt.data() + pix * nm;
              for (int64_t k = 0; k < nm; ++k) {
                dc[k] += g * pr[k];
                dp[k] += g * c[k];
              }
            }
          }
        }
        losses[p] = static_cast<S>(sum) / static_cast<S>(HW) / area[p];
        if (grad) {
          // a non-finite scale: NaN outside the box (math::mask_poisons)
          const bool bad = math::mask_poisons(scale);
          const bool outside = (x1 - x0) * (y1 - y0) < HW;
          for (int64_t k = 0; k < nm; ++k)
            gcp[p * nm + k] = static_cast<T>(bad && outside ? nan : dc[k]);
          if (bad && outside) {
            for (int64_t y = 0; y < a.H; ++y)
              for (int64_t x = 0; x < W; ++x)
                if (y < y0 || y >= y1 || x < x0 || x >= x1)
                  std::fill_n(dpt.data() + (y * W + x) * nm, nm, nan);
          }
        }
      }
      if (grad) {
        for (int64_t k = 0; k < nm; ++k)
          for (int64_t i = 0; i < HW; ++i) gpb[k * HW + i] = static_cast<T>(dpt[i * nm + k]);
      }
    }
  });

  at::Tensor loss;
  if (a.reduction == Reduction::kNone) {
    loss = at::empty({P}, a.coef.options());
    T* out = loss.mutable_data_ptr<T>();
    for (int64_t p = 0; p < P; ++p) out[p] = static_cast<T>(losses[p]);
  } else {
    loss = at::empty({}, a.coef.options());
    double s = 0;
    for (int64_t p = 0; p < P; ++p) s += static_cast<double>(losses[p]);
    *loss.mutable_data_ptr<T>() = static_cast<T>(static_cast<S>(s) * red);
  }
  return {loss, gc, gp};
}

}  // namespace
}  // namespace cpu

MaskTriple mask_run_cpu(const MaskArgs& a, bool grad, const at::Tensor& up) {
  MaskTriple out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.coef.scalar_type(),
                                  "prototype_mask_cpu",
                                  [&] { out = cpu::run<scalar_t>(a, grad, up); });
  return out;
}

}  // namespace detloss

TORCH_LIBRARY_IMPL(DETLOSS_OPS_NS, CPU, m) {
  m.impl("prototype_mask_loss", &detloss::mask_loss_entry<detloss::mask_run_cpu>);
  m.impl("prototype_mask_loss_with_grad",
         &detloss::mask_loss_with_grad_entry<detloss::mask_run_cpu>);
  m.impl("prototype_mask_backward", &detloss::mask_backward_entry<detloss::mask_run_cpu>);
}
