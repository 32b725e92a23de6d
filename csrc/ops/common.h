// Host-side helpers shared by every op family and both devices: argument validation with
// messages that name the argument, reduction parsing, and the broadcast descriptor of
// optional operands. Kernels never see at::Tensor; they get the plain structs of
// csrc/ops/operand.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "library.h"
#include "operand.h"

namespace detloss {

enum class Reduction : int32_t { kNone = 0, kMean = 1, kSum = 2 };

// 'none' | 'mean' | 'sum'; anything else is a ValueError naming the valid values.
Reduction parse_reduction(std::string_view reduction, const char* op);

// What a sum over n units is multiplied by to give the reduction, and what each unit's
// gradient is scaled by: 1/n for 'mean' (1 when n == 0: the mean of nothing is 0), else 1.
template <typename O>
inline O reduction_scale(Reduction r, int64_t n) {
  return r == Reduction::kMean && n > 0 ? O(1) / static_cast<O>(n) : O(1);
}

// The gradient for upstream gradient `up`, from `g`, the gradient the forward computed for an
// upstream of 1 (the 'mean' scale included): for 'mean'/'sum', `up` is 0-dim; for 'none' it
// broadcasts to the unreduced loss, whose shape is g's without the last dim when `rows`
// (a box's 4 coordinates, a distribution's bins). In place when `in_place` (g is consumed):
// the forward's buffer becomes the gradient, nothing is allocated. A scalar `up` of exactly 1
// (loss.backward()) costs no pass: read on the host for CPU tensors, on the device (by every
// thread of a kernel that then stops) for CUDA ones, so there is no synchronisation. One rule
// for the backward of a forward that computed the gradient and for the recomputing backward
// ops, so the two give the same bits. Fake tensors (torch.compile) take the functional form.
at::Tensor scale_by_upstream(at::Tensor g, const at::Tensor& up, Reduction reduction, bool rows,
                             bool in_place);

// Set by the CUDA kernels at load time: g *= *up (0-dim, on the device), skipped in-kernel
// when *up == 1. It serves tensors of the CUDA drivers' device: CUDA (CPU under the emulator).
using ScaleInPlaceFn = void (*)(at::Tensor& g, const at::Tensor& up);
void set_cuda_scale_in_place(ScaleInPlaceFn fn);

// A number parameter (an eps, an exponent, a weight) is used in the arithmetic of the
// inputs: float32 for float32/float16/bfloat16 ones, where a finite double beyond float32's
// range is inf and its results NaN. ValueError naming the argument for such a value (float64
// inputs take any finite one).
void check_representable(double v, at::ScalarType input_dtype, const char* arg, const char* op);

// The dtypes every kernel takes: float32, float64, float16, bfloat16.
inline bool is_floating(at::ScalarType s) {
  return s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16;
}

// A schema's str argument as a std::string_view (what the validation takes).
inline std::string_view sv(c10::string_view s) { return std::string_view(s.data(), s.size()); }

// A floating tensor (fp32, fp64, fp16, bf16); TypeError otherwise.
void check_floating(const at::Tensor& t, const char* arg, const char* op);

// `t` on the same device as `ref`; ValueError naming both devices otherwise.
void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* arg,
                       const char* ref_arg, const char* op);

// An optional operand described for reading in place (see operand.h). The tensor is cast to
// `dtype` if needed and kept alive by the descriptor. ValueError if it does not broadcast
// to `shape` (the shape of the unreduced loss).
struct OperandDesc {
  at::Tensor tensor;  // what the pointer points into (keeps it alive)
  int64_t inner = 1;
  int64_t mid = 1;
  OperandMode mode = OperandMode::kAbsent;

  template <typename T>
  Operand<T> typed() const {
    Operand<T> o;
    o.mode = mode;
    o.inner = inner;
    o.mid = mid;
    o.ptr = mode == OperandMode::kAbsent ? nullptr
                                         : static_cast<const T*>(tensor.const_data_ptr());
    return o;
  }
  bool full() const { return mode == OperandMode::kFull; }
};

OperandDesc describe_operand(const std::optional<at::Tensor>& t, at::IntArrayRef shape,
                             at::ScalarType dtype, const char* arg, const char* op);

// The same for a tensor of rows [..., row] (boxes: row = 4) whose leading dims broadcast to
// `shape`: element i of the loss reads the `row` values at ptr + row·operand_index(i).
// ValueError unless the last dim is `row` and the leading dims broadcast.
OperandDesc describe_rows(const at::Tensor& t, at::IntArrayRef shape, int64_t row,
                          at::ScalarType dtype, const char* arg, const char* op);

}  // namespace detloss
