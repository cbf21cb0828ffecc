/* The vector instructions the kernels are written in: AVX-512, or, where the library is built
 * for a CPU without it (AVX2 + FMA + F16C), avx512_on_avx2.h's pairs of 256-bit halves. */
#ifndef EDGEDS_SIMD_H
#define EDGEDS_SIMD_H
#include <immintrin.h>
#ifndef __AVX512F__
#include "avx512_on_avx2.h"
#endif
#endif
