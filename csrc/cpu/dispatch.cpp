#include "dispatch.h"

#include <ATen/Version.h>

#include <string>

namespace detloss {
namespace cpu {

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
