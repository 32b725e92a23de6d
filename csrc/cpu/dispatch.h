// Run-time choice of the CPU capability (DEFAULT, AVX2, AVX512) for the vectorised loops.
//
// The loops are compiled once per capability (csrc/cpu/capability/*.cpp, each with its own
// -m flags and CPU_CAPABILITY), so one build runs on any x86-64 and uses the widest
// vectors the machine has. The choice follows ATen's (at::get_cpu_capability(), which
// honours ATEN_CPU_CAPABILITY=default|avx2|avx512), limited to what this build compiled.
#pragma once

#include <cstdint>

namespace detloss {
namespace cpu {

enum class Capability : int32_t { kDefault = 0, kAVX2 = 1, kAVX512 = 2 };

Capability capability();
const char* capability_name(Capability c);
// The capabilities compiled into this build, e.g. "DEFAULT,AVX2,AVX512".
const char* compiled_capabilities();

}  // namespace cpu
}  // namespace detloss

// Calls NS::fn(args...) for the capability chosen at run time.
#if defined(DETLOSS_HAVE_AVX512) && defined(DETLOSS_HAVE_AVX2)
#define DETLOSS_CPU_DISPATCH(fn, ...)                                              \
  [&]() {                                                                          \
    switch (::detloss::cpu::capability()) {                                        \
      case ::detloss::cpu::Capability::kAVX512: return AVX512::fn(__VA_ARGS__);   \
      case ::detloss::cpu::Capability::kAVX2: return AVX2::fn(__VA_ARGS__);       \
      default: return DEFAULT::fn(__VA_ARGS__);                                    \
    }                                                                              \
  }()
#elif defined(DETLOSS_HAVE_AVX2)
#define DETLOSS_CPU_DISPATCH(fn, ...)                                              \
  [&]() {                                                                          \
    switch (::detloss::cpu::capability()) {                                        \
      case ::detloss::cpu::Capability::kDefault: return DEFAULT::fn(__VA_ARGS__); \
      default: return AVX2::fn(__VA_ARGS__);                                       \
    }                                                                              \
  }()
#else
#define DETLOSS_CPU_DISPATCH(fn, ...) DEFAULT::fn(__VA_ARGS__)
#endif

// Declares `decl` (a function declaration) in every capability namespace compiled.
#define DETLOSS_CPU_DECLARE_DEFAULT(decl) \
  namespace DEFAULT {                     \
  decl;                                   \
  }
#if defined(DETLOSS_HAVE_AVX2)
#define DETLOSS_CPU_DECLARE_AVX2(decl) \
  namespace AVX2 {                     \
  decl;                                \
  }
#else
#define DETLOSS_CPU_DECLARE_AVX2(decl)
#endif
#if defined(DETLOSS_HAVE_AVX512)
#define DETLOSS_CPU_DECLARE_AVX512(decl) \
  namespace AVX512 {                     \
  decl;                                  \
  }
#else
#define DETLOSS_CPU_DECLARE_AVX512(decl)
#endif
#define DETLOSS_CPU_DECLARE(decl) \
  DETLOSS_CPU_DECLARE_DEFAULT(decl) DETLOSS_CPU_DECLARE_AVX2(decl) DETLOSS_CPU_DECLARE_AVX512(decl)
