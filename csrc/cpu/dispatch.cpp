#include "dispatch.h"

#include <ATen/Version.h>

#include <string>

namespace detloss {
namespace cpu {

// What this CPU can execute of the flags each capability is compiled with (setup.py).
// ATen returns AVX512 for ATEN_CPU_CAPABILITY=avx512 even on a CPU without it; running
// those loops there dies of SIGILL, so the request is clamped to what the CPU has.
static bool cpu_runs(Capability c) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  if (c == Capability::kAVX512)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           cpu_runs(Capability::kAVX2);
  if (c == Capability::kAVX2)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
#endif
  return c == Capability::kDefault;
}

static Capability detect() {
  const std::string s = at::get_cpu_capability();  // "DEFAULT", "AVX2", "AVX512", ...
  Capability c = Capability::kDefault;
  if (s == "AVX512") c = Capability::kAVX512;
  else if (s == "AVX2") c = Capability::kAVX2;
#if !defined(DETLOSS_HAVE_AVX512)
  if (c == Capability::kAVX512) c = Capability::kAVX2;
#endif
#if !defined(DETLOSS_HAVE_AVX2)
  c = Capability::kDefault;
#endif
  if (c == Capability::kAVX512 && !cpu_runs(c)) c = Capability::kAVX2;
  if (c == Capability::kAVX2 && !cpu_runs(c)) c = Capability::kDefault;
  return c;
}

Capability capability() {
  static const Capability c = detect();
  return c;
}

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::kAVX512: return "AVX512";
    case Capability::kAVX2: return "AVX2";
    default: return "DEFAULT";
  }
}

const char* compiled_capabilities() {
#if defined(DETLOSS_HAVE_AVX512)
  return "DEFAULT,AVX2,AVX512";
#elif defined(DETLOSS_HAVE_AVX2)
  return "DEFAULT,AVX2";
#else
  return "DEFAULT";
#endif
}

}  // namespace cpu
}  // namespace detloss
