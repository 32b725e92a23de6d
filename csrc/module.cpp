// detloss_cuda._C: importing it loads the ops (their TORCH_LIBRARY registrations live in
// this shared object) and exposes how the build was made.
#include <pybind11/pybind11.h>

#include "cpu/dispatch.h"
#include "ops/layout.h"
// DETLOSS_VERSION, DETLOSS_TORCH_VERSION, DETLOSS_CUDA_ARCHS, DETLOSS_BUILD_NOTE and
// DETLOSS_WITH_CUDA: written by setup.py into its build folder (only this file reads them,
// so a new version or arch list recompiles this file alone)
#include "detloss_build_config.h"

#if defined(DETLOSS_WITH_CUDA)
#include <cuda_runtime_api.h>  // CUDART_VERSION: the toolkit the kernels were compiled with
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "detloss_cuda native ops (registered under torch.ops.detloss)";
  m.attr("dfl_bin_major_max_bins") = detloss::kDflBinMajorMaxBins;  // detloss_cuda/_ops.py
  m.def(
      "build_info",
      []() {
        py::dict d;
        d["version"] = DETLOSS_VERSION;
        d["torch_version"] = DETLOSS_TORCH_VERSION;
        d["build_note"] = DETLOSS_BUILD_NOTE;
#if defined(DETLOSS_WITH_CUDA)
        constexpr int v = CUDART_VERSION;
        d["with_cuda"] = true;
        d["cuda_version"] = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
        d["cuda_archs"] = DETLOSS_CUDA_ARCHS;
#else
        d["with_cuda"] = false;
        d["cuda_version"] = py::none();
        d["cuda_archs"] = "";
#endif
        d["cpu_capabilities"] = detloss::cpu::compiled_capabilities();
        d["cpu_capability"] =
            detloss::cpu::capability_name(detloss::cpu::capability());
        return d;
      },
      "How this build was made: version, torch it was built against, CUDA (compiled or not, "
      "toolkit version, architectures), the CPU capabilities compiled and the one in use, "
      "and the build's one-line account of what it built and why.");
}
