/* The AVX-512 intrinsics the native kernels use, written as pairs of AVX2 halves, so the same
 * kernels build and run on CPUs without AVX-512 (AVX2 + FMA + F16C, x86-64-v3). Included by
 * simd.h only where the compiler targets no AVX-512. Each one gives what its AVX-512 namesake
 * gives, lane for lane; reductions sum in a fixed order of their own, so a build's results never
 * depend on the batch or the threads. The 512-bit types become structs of two 256-bit halves:
 * only these intrinsics touch them. The hot loops whose 32 registers of halves would spill
 * (the int8 dot products, decode attention's inner loops) have 256-bit versions of their own:
 * int8_avx2.h, decode_avx2.h. */
#ifndef EDGEDS_AVX512_ON_AVX2_H
#define EDGEDS_AVX512_ON_AVX2_H

#include <immintrin.h>
#include <stdint.h>

typedef struct { __m256 v[2]; } e512;
typedef struct { __m256i v[2]; } e512i;
typedef struct { __m256d v[2]; } e512d;
#define __m512 e512
#define __m512i e512i
#define __m512d e512d

#define E5 static inline __attribute__((always_inline))

/* ---- masks: bit i of a __mmask16 is lane i; a half's 8 bits as a lane mask and back ---- */
E5 __m256i e5_lanes(__mmask16 k, int half) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i m = _mm256_and_si256(_mm256_set1_epi32((k >> (8 * half)) & 0xff), bit);
  return _mm256_cmpeq_epi32(m, bit);
}
E5 __mmask16 e5_mask(__m256 lo, __m256 hi) {
  return (__mmask16)(_mm256_movemask_ps(lo) | (_mm256_movemask_ps(hi) << 8));
}
E5 __m256 e5_blend(__m256 src, __m256 a, __mmask16 k, int half) {
  return _mm256_blendv_ps(src, a, _mm256_castsi256_ps(e5_lanes(k, half)));
}

/* ---- float ---- */
E5 e512 e5_set1_ps(float x) { return (e512){{_mm256_set1_ps(x), _mm256_set1_ps(x)}}; }
E5 e512 e5_setzero_ps(void) { return (e512){{_mm256_setzero_ps(), _mm256_setzero_ps()}}; }
E5 e512 e5_loadu_ps(const void *p) {
  const float *f = (const float *)p;
  return (e512){{_mm256_loadu_ps(f), _mm256_loadu_ps(f + 8)}};
}
E5 void e5_storeu_ps(void *p, e512 a) {
  float *f = (float *)p;
  _mm256_storeu_ps(f, a.v[0]), _mm256_storeu_ps(f + 8, a.v[1]);
}
E5 e512 e5_maskz_loadu_ps(__mmask16 k, const void *p) { /* lanes off the mask are not read */
  const float *f = (const float *)p;
  return (e512){{_mm256_maskload_ps(f, e5_lanes(k, 0)), _mm256_maskload_ps(f + 8, e5_lanes(k, 1))}};
}
E5 void e5_mask_storeu_ps(void *p, __mmask16 k, e512 a) {
  float *f = (float *)p;
  _mm256_maskstore_ps(f, e5_lanes(k, 0), a.v[0]), _mm256_maskstore_ps(f + 8, e5_lanes(k, 1), a.v[1]);
}
#define E5_BINARY(name, op)                                                                       \
  E5 e512 e5_##name(e512 a, e512 b) { return (e512){{op(a.v[0], b.v[0]), op(a.v[1], b.v[1])}}; }
E5_BINARY(add_ps, _mm256_add_ps)
E5_BINARY(sub_ps, _mm256_sub_ps)
E5_BINARY(mul_ps, _mm256_mul_ps)
E5_BINARY(max_ps, _mm256_max_ps)
E5_BINARY(min_ps, _mm256_min_ps)
E5_BINARY(unpacklo_ps, _mm256_unpacklo_ps) /* per 128-bit lane, as the 512-bit ones */
E5_BINARY(unpackhi_ps, _mm256_unpackhi_ps)
E5 e512 e5_fmadd_ps(e512 a, e512 b, e512 c) {
  return (e512){{_mm256_fmadd_ps(a.v[0], b.v[0], c.v[0]), _mm256_fmadd_ps(a.v[1], b.v[1], c.v[1])}};
}
E5 e512 e5_fnmadd_ps(e512 a, e512 b, e512 c) {
  return (e512){{_mm256_fnmadd_ps(a.v[0], b.v[0], c.v[0]),
                 _mm256_fnmadd_ps(a.v[1], b.v[1], c.v[1])}};
}
E5 e512 e5_maskz_mov_ps(__mmask16 k, e512 a) {
  return (e512){{_mm256_and_ps(a.v[0], _mm256_castsi256_ps(e5_lanes(k, 0))),
                 _mm256_and_ps(a.v[1], _mm256_castsi256_ps(e5_lanes(k, 1)))}};
}
E5 e512 e5_mask_max_ps(e512 src, __mmask16 k, e512 a, e512 b) {
  return (e512){{e5_blend(src.v[0], _mm256_max_ps(a.v[0], b.v[0]), k, 0),
                 e5_blend(src.v[1], _mm256_max_ps(a.v[1], b.v[1]), k, 1)}};
}
E5 e512 e5_mask_mul_ps(e512 src, __mmask16 k, e512 a, e512 b) {
  return (e512){{e5_blend(src.v[0], _mm256_mul_ps(a.v[0], b.v[0]), k, 0),
                 e5_blend(src.v[1], _mm256_mul_ps(a.v[1], b.v[1]), k, 1)}};
}
E5 float e5_reduce_add_ps(e512 a) {
  __m256 s = _mm256_add_ps(a.v[0], a.v[1]);
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
E5 float e5_reduce_max_ps(e512 a) {
  __m256 s = _mm256_max_ps(a.v[0], a.v[1]);
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}
/* a x 2^floor(b), in two steps so every exponent in [-252, 254] stays a normal power of two
 * (past it the product is 0 or inf either way, as with vscalefps). */
E5 __m256 e5_scalef8(__m256 a, __m256 b) {
  const __m256 n = _mm256_min_ps(_mm256_max_ps(_mm256_floor_ps(b), _mm256_set1_ps(-252.0f)),
                                 _mm256_set1_ps(254.0f));
  const __m256 n1 = _mm256_floor_ps(_mm256_mul_ps(n, _mm256_set1_ps(0.5f)));
  const __m256i e1 = _mm256_cvttps_epi32(n1), e2 = _mm256_cvttps_epi32(_mm256_sub_ps(n, n1));
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 p1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e1, bias), 23));
  const __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(a, p1), p2);
}
E5_BINARY(scalef_ps, e5_scalef8)
E5 e512 e5_maskz_scalef_ps(__mmask16 k, e512 a, e512 b) {
  return e5_maskz_mov_ps(k, e5_scalef_ps(a, b));
}
#define e5_cmp_ps_mask(a, b, imm)                                                                 \
  ({                                                                                              \
    const e512 a_ = (a), b_ = (b);                                                                \
    e5_mask(_mm256_cmp_ps(a_.v[0], b_.v[0], imm), _mm256_cmp_ps(a_.v[1], b_.v[1], imm));          \
  })
#define e5_roundscale_ps(a, imm)                                                                  \
  ({                                                                                              \
    const e512 a_ = (a);                                                                          \
    (e512){{_mm256_round_ps(a_.v[0], (imm) & 15), _mm256_round_ps(a_.v[1], (imm) & 15)}};          \
  })
E5 e512 e5_cvtph_ps(__m256i h) {
  return (e512){{_mm256_cvtph_ps(_mm256_castsi256_si128(h)),
                 _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1))}};
}
#define e5_cvtps_ph(a, imm)                                                                       \
  ({                                                                                              \
    const e512 a_ = (a);                                                                          \
    _mm256_set_m128i(_mm256_cvtps_ph(a_.v[1], imm), _mm256_cvtps_ph(a_.v[0], imm));               \
  })
/* 128-bit lanes: result lanes 0, 1 from a, 2, 3 from b, each picked by two bits of imm */
#define e5_shuffle_f32x4(a, b, imm)                                                               \
  ({                                                                                              \
    const e512 a_ = (a), b_ = (b);                                                                \
    (e512){{_mm256_permute2f128_ps(a_.v[0], a_.v[1], ((imm) & 3) | (((imm) >> 2) & 3) << 4),      \
            _mm256_permute2f128_ps(b_.v[0], b_.v[1], (((imm) >> 4) & 3) | (((imm) >> 6) & 3) << 4)}}; \
  })
#define e5_extractf32x8_ps(a, imm) ((a).v[(imm) & 1])
E5 __m256 e5_castps512_ps256(e512 a) { return a.v[0]; }
E5 __m128 e5_castps512_ps128(e512 a) { return _mm256_castps256_ps128(a.v[0]); }
E5 float e5_cvtss_f32(e512 a) { return _mm256_cvtss_f32(a.v[0]); }

/* ---- bit casts ---- */
E5 e512 e5_castsi512_ps(e512i a) {
  return (e512){{_mm256_castsi256_ps(a.v[0]), _mm256_castsi256_ps(a.v[1])}};
}
E5 e512i e5_castps_si512(e512 a) {
  return (e512i){{_mm256_castps_si256(a.v[0]), _mm256_castps_si256(a.v[1])}};
}
E5 e512d e5_castps_pd(e512 a) {
  return (e512d){{_mm256_castps_pd(a.v[0]), _mm256_castps_pd(a.v[1])}};
}
E5 e512 e5_castpd_ps(e512d a) {
  return (e512){{_mm256_castpd_ps(a.v[0]), _mm256_castpd_ps(a.v[1])}};
}
E5 e512i e5_castsi256_si512(__m256i a) { return (e512i){{a, _mm256_setzero_si256()}}; }

/* ---- double ---- */
E5 e512d e5_setzero_pd(void) { return (e512d){{_mm256_setzero_pd(), _mm256_setzero_pd()}}; }
E5 e512d e5_cvtps_pd(__m256 a) {
  return (e512d){{_mm256_cvtps_pd(_mm256_castps256_ps128(a)),
                  _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1))}};
}
E5 e512d e5_add_pd(e512d a, e512d b) {
  return (e512d){{_mm256_add_pd(a.v[0], b.v[0]), _mm256_add_pd(a.v[1], b.v[1])}};
}
E5 e512d e5_fmadd_pd(e512d a, e512d b, e512d c) {
  return (e512d){{_mm256_fmadd_pd(a.v[0], b.v[0], c.v[0]), _mm256_fmadd_pd(a.v[1], b.v[1], c.v[1])}};
}
E5 e512d e5_unpacklo_pd(e512d a, e512d b) {
  return (e512d){{_mm256_unpacklo_pd(a.v[0], b.v[0]), _mm256_unpacklo_pd(a.v[1], b.v[1])}};
}
E5 e512d e5_unpackhi_pd(e512d a, e512d b) {
  return (e512d){{_mm256_unpackhi_pd(a.v[0], b.v[0]), _mm256_unpackhi_pd(a.v[1], b.v[1])}};
}
E5 double e5_reduce_add_pd(e512d a) {
  const __m256d s = _mm256_add_pd(a.v[0], a.v[1]);
  const __m128d x = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  return _mm_cvtsd_f64(_mm_add_sd(x, _mm_unpackhi_pd(x, x)));
}

/* ---- 32-bit integers ---- */
E5 e512i e5_set1_epi32(int x) { return (e512i){{_mm256_set1_epi32(x), _mm256_set1_epi32(x)}}; }
E5 e512i e5_setzero_si512(void) {
  return (e512i){{_mm256_setzero_si256(), _mm256_setzero_si256()}};
}
E5 e512i e5_setr_epi32(int a0, int a1, int a2, int a3, int a4, int a5, int a6, int a7, int a8,
                       int a9, int a10, int a11, int a12, int a13, int a14, int a15) {
  return (e512i){{_mm256_setr_epi32(a0, a1, a2, a3, a4, a5, a6, a7),
                  _mm256_setr_epi32(a8, a9, a10, a11, a12, a13, a14, a15)}};
}
E5 e512i e5_loadu_si512(const void *p) {
  const __m256i *q = (const __m256i *)p;
  return (e512i){{_mm256_loadu_si256(q), _mm256_loadu_si256(q + 1)}};
}
E5 void e5_storeu_si512(void *p, e512i a) {
  __m256i *q = (__m256i *)p;
  _mm256_storeu_si256(q, a.v[0]), _mm256_storeu_si256(q + 1, a.v[1]);
}
#define E5_IBINARY(name, op)                                                                      \
  E5 e512i e5_##name(e512i a, e512i b) { return (e512i){{op(a.v[0], b.v[0]), op(a.v[1], b.v[1])}}; }
E5_IBINARY(add_epi32, _mm256_add_epi32)
E5_IBINARY(sub_epi32, _mm256_sub_epi32)
E5_IBINARY(and_si512, _mm256_and_si256)
E5_IBINARY(unpacklo_epi32, _mm256_unpacklo_epi32)
E5_IBINARY(unpackhi_epi32, _mm256_unpackhi_epi32)
E5_IBINARY(unpacklo_epi64, _mm256_unpacklo_epi64)
E5_IBINARY(unpackhi_epi64, _mm256_unpackhi_epi64)
E5 e512i e5_slli_epi32(e512i a, int n) {
  return (e512i){{_mm256_slli_epi32(a.v[0], n), _mm256_slli_epi32(a.v[1], n)}};
}
E5 e512i e5_srli_epi32(e512i a, int n) {
  return (e512i){{_mm256_srli_epi32(a.v[0], n), _mm256_srli_epi32(a.v[1], n)}};
}
E5 e512 e5_cvtepi32_ps(e512i a) {
  return (e512){{_mm256_cvtepi32_ps(a.v[0]), _mm256_cvtepi32_ps(a.v[1])}};
}
E5 e512i e5_cvtepi8_epi32(__m128i a) {
  return (e512i){{_mm256_cvtepi8_epi32(a), _mm256_cvtepi8_epi32(_mm_srli_si128(a, 8))}};
}
E5 __mmask16 e5_cmpeq_epi32_mask(e512i a, e512i b) {
  return e5_mask(_mm256_castsi256_ps(_mm256_cmpeq_epi32(a.v[0], b.v[0])),
                 _mm256_castsi256_ps(_mm256_cmpeq_epi32(a.v[1], b.v[1])));
}
E5 __mmask16 e5_cmple_epi32_mask(e512i a, e512i b) {
  return (__mmask16)~e5_mask(_mm256_castsi256_ps(_mm256_cmpgt_epi32(a.v[0], b.v[0])),
                             _mm256_castsi256_ps(_mm256_cmpgt_epi32(a.v[1], b.v[1])));
}
E5 e512i e5_mask_and_epi32(e512i src, __mmask16 k, e512i a, e512i b) {
  e512i out;
  for (int h = 0; h < 2; h++)
    out.v[h] = _mm256_blendv_epi8(src.v[h], _mm256_and_si256(a.v[h], b.v[h]), e5_lanes(k, h));
  return out;
}
/* 16 int32 to 16 int16, truncated (vpmovdw). */
E5 __m256i e5_cvtepi32_epi16(e512i a) {
  const __m256i low = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
                                       0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
  __m128i h[2];
  for (int i = 0; i < 2; i++)
    h[i] = _mm256_castsi256_si128(
        _mm256_permute4x64_epi64(_mm256_shuffle_epi8(a.v[i], low), 0x08)); /* qwords 0, 2 */
  return _mm256_set_m128i(h[1], h[0]);
}
#define e5_inserti64x4(a, x, imm)                                                                 \
  ({                                                                                              \
    e512i a_ = (a);                                                                               \
    a_.v[(imm) & 1] = (x);                                                                        \
    a_;                                                                                           \
  })
#define e5_shuffle_i32x4(a, b, imm)                                                               \
  ({                                                                                              \
    const e512i a_ = (a), b_ = (b);                                                               \
    (e512i){{_mm256_permute2x128_si256(a_.v[0], a_.v[1], ((imm) & 3) | (((imm) >> 2) & 3) << 4),  \
             _mm256_permute2x128_si256(b_.v[0], b_.v[1],                                          \
                                       (((imm) >> 4) & 3) | (((imm) >> 6) & 3) << 4)}};            \
  })
/* out.u16[i] = a.u16[idx.u16[i] % 32] */
E5 e512i e5_permutexvar_epi16(e512i idx, e512i a) {
  uint16_t i16[32], a16[32], o16[32];
  e5_storeu_si512(i16, idx), e5_storeu_si512(a16, a);
  for (int i = 0; i < 32; i++) o16[i] = a16[i16[i] & 31];
  return e5_loadu_si512(o16);
}
/* The kernels' names for them. */
#define _mm512_set1_ps e5_set1_ps
#define _mm512_setzero_ps e5_setzero_ps
#define _mm512_loadu_ps e5_loadu_ps
#define _mm512_load_ps e5_loadu_ps
#define _mm512_storeu_ps e5_storeu_ps
#define _mm512_store_ps e5_storeu_ps
#define _mm512_maskz_loadu_ps e5_maskz_loadu_ps
#define _mm512_mask_storeu_ps e5_mask_storeu_ps
#define _mm512_add_ps e5_add_ps
#define _mm512_sub_ps e5_sub_ps
#define _mm512_mul_ps e5_mul_ps
#define _mm512_max_ps e5_max_ps
#define _mm512_min_ps e5_min_ps
#define _mm512_unpacklo_ps e5_unpacklo_ps
#define _mm512_unpackhi_ps e5_unpackhi_ps
#define _mm512_fmadd_ps e5_fmadd_ps
#define _mm512_fnmadd_ps e5_fnmadd_ps
#define _mm512_maskz_mov_ps e5_maskz_mov_ps
#define _mm512_mask_max_ps e5_mask_max_ps
#define _mm512_mask_mul_ps e5_mask_mul_ps
#define _mm512_reduce_add_ps e5_reduce_add_ps
#define _mm512_reduce_max_ps e5_reduce_max_ps
#define _mm512_scalef_ps e5_scalef_ps
#define _mm512_maskz_scalef_ps e5_maskz_scalef_ps
#define _mm512_cmp_ps_mask e5_cmp_ps_mask
#define _mm512_roundscale_ps e5_roundscale_ps
#define _mm512_cvtph_ps e5_cvtph_ps
#define _mm512_cvtps_ph e5_cvtps_ph
#define _mm512_shuffle_f32x4 e5_shuffle_f32x4
#define _mm512_extractf32x8_ps e5_extractf32x8_ps
#define _mm512_castps512_ps256 e5_castps512_ps256
#define _mm512_castps512_ps128 e5_castps512_ps128
#define _mm512_cvtss_f32 e5_cvtss_f32
#define _mm512_castsi512_ps e5_castsi512_ps
#define _mm512_castps_si512 e5_castps_si512
#define _mm512_castps_pd e5_castps_pd
#define _mm512_castpd_ps e5_castpd_ps
#define _mm512_castsi256_si512 e5_castsi256_si512
#define _mm512_setzero_pd e5_setzero_pd
#define _mm512_cvtps_pd e5_cvtps_pd
#define _mm512_add_pd e5_add_pd
#define _mm512_fmadd_pd e5_fmadd_pd
#define _mm512_unpacklo_pd e5_unpacklo_pd
#define _mm512_unpackhi_pd e5_unpackhi_pd
#define _mm512_reduce_add_pd e5_reduce_add_pd
#define _mm512_set1_epi32 e5_set1_epi32
#define _mm512_setzero_si512 e5_setzero_si512
#undef _mm512_setr_epi32 /* a macro in gcc's header */
#define _mm512_setr_epi32 e5_setr_epi32
#define _mm512_loadu_si512 e5_loadu_si512
#define _mm512_load_si512 e5_loadu_si512
#define _mm512_storeu_si512 e5_storeu_si512
#define _mm512_store_si512 e5_storeu_si512
#define _mm512_add_epi32 e5_add_epi32
#define _mm512_sub_epi32 e5_sub_epi32
#define _mm512_and_si512 e5_and_si512
#define _mm512_unpacklo_epi32 e5_unpacklo_epi32
#define _mm512_unpackhi_epi32 e5_unpackhi_epi32
#define _mm512_unpacklo_epi64 e5_unpacklo_epi64
#define _mm512_unpackhi_epi64 e5_unpackhi_epi64
#define _mm512_slli_epi32 e5_slli_epi32
#define _mm512_srli_epi32 e5_srli_epi32
#define _mm512_cvtepi32_ps e5_cvtepi32_ps
#define _mm512_cvtepi8_epi32 e5_cvtepi8_epi32
#define _mm512_cmpeq_epi32_mask e5_cmpeq_epi32_mask
#define _mm512_cmple_epi32_mask e5_cmple_epi32_mask
#define _mm512_mask_and_epi32 e5_mask_and_epi32
#define _mm512_cvtepi32_epi16 e5_cvtepi32_epi16
#define _mm512_inserti64x4 e5_inserti64x4
#define _mm512_shuffle_i32x4 e5_shuffle_i32x4
#define _mm512_permutexvar_epi16 e5_permutexvar_epi16

#undef E5
#endif
