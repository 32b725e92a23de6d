// The vectorised CPU loops of every family, compiled for CPU_CAPABILITY=AVX512.
// setup.py and CMakeLists.txt give this file its own flags (see csrc/cpu/dispatch.h).
#include "../cls_vec.h"
#include "../box_vec.h"
#include "../dfl_vec.h"
