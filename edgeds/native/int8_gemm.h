/* The int8 GEMM of the native backend (`decoder.c`) and of the benchmarks that measure it
 * (`benchmarks/kernels/amx_gemm.c`, `benchmarks/kernels/fused_decode_step.c`):
 * y = (A - 128) W * row_scale * channel_scale, A uint8 [M, K] (rows quantized with their own
 * scales, zero point 128), W int8 [K, N] packed sixteen columns by four K values to a 64-byte row:
 * the operand layout of both vpdpbusd (one zmm) and AMX's tdpbusd (one tile row), so one packing
 * serves both kernels. The zero point is taken out after the integer sum (128 x the column sums
 * of W), as MLAS does. */
#pragma once
#include "simd.h"
#ifndef __AVX512F__
#include "int8_avx2.h"
#endif
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
  int K, N;
  int8_t *packed;  /* [N/16][K/4][16][4] */
  int32_t *col_sums; /* sum_k W[k][n]: 128 times it is what the zero point adds to column n */
  float *scale;    /* per channel */
  /* packed, scale and col_sums are the caller's (mla_moe.c's weights read in the artifact's
   * memory map), not freed with the weights. */
  int borrowed;
} Weights;

/* What the activations' zero point (128) adds to columns n..n+15: subtracted from the sums
 * (the AVX2 build's dot products take it out as they go: int8_avx2.h). */
static inline __m512i zero_fix(const Weights *w, int n) {
#ifdef __AVX512F__
  return _mm512_slli_epi32(_mm512_loadu_si512(w->col_sums + n), 7);
#else
  (void)w, (void)n;
  return _mm512_setzero_si512();
#endif
}

/* y = (a - 128) W * row_scale * channel_scale for M rows of a: the kernels below. With two
 * activation planes (planes 2, below) a's rows come in pairs, a row and its remainder, and y
 * gets M / 2 rows. */
typedef void (*Gemm)(const uint8_t *a, int M, int planes, const Weights *w, const float *row_scale,
                     float *y);

/* Activations as two int8 planes (the "int16 per row" of both decoders): x / scale rounded to
 * q and what the rounding left to lo, PLANE_STEPS x finer, each a uint8 row (zero point 128) of
 * the same scale, so x / scale ~ (q - 128) + (lo - 128) / PLANE_STEPS, about 15 bits. The same
 * weight bytes meet two rows instead of one, the int32 sums stay exact, and they combine in
 * float after (combine_planes): a row's result still does not depend on its kernel or batch. */
enum { PLANE_STEPS = 254 };

/* lo for a row src already rounded to q at scale s (both within +-127 of 128). */
static inline void quantize_remainder(const float *src, int n, float s, const uint8_t *q,
                                      uint8_t *lo) {
  for (int i = 0; i < n; i++) {
    const float v = s > 0 ? src[i] / s : 0;
    lo[i] = (uint8_t)((int)nearbyintf((v - (float)((int)q[i] - 128)) * PLANE_STEPS) + 128);
  }
}

/* Sixteen columns' sums of a row (hi) and of its remainder plane (lo), zero point taken out. One
 * explicit FMA: -ffast-math may contract a multiply and an add written apart in one inlined copy
 * and not in another, and every kernel must give a row the same bits. */
static inline __m512 combine_planes(__m512i hi, __m512i lo, __m512i fix) {
  const __m512 h = _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, fix));
  const __m512 l = _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, fix));
  return _mm512_fmadd_ps(l, _mm512_set1_ps(1.0f / PLANE_STEPS), h);
}

/* w: int8 [K, N] row-major, as the export stores a linear layer's weights; K % 4 == 0,
 * N % 64 == 0. Each thread packs whole 64-column stripes: four rows at a time, it reads one
 * 64-byte line of each and interleaves them into the four 16-column blocks' 64-byte rows. */
static inline Weights pack(const int8_t *w, const float *scale, int K, int N) {
  Weights p = {K, N, aligned_alloc(64, (size_t)K * N), aligned_alloc(64, N * 4),
               aligned_alloc(64, N * 4)};
#pragma omp parallel for schedule(static)
  for (int stripe = 0; stripe < N / 64; stripe++) {
    __m512i sum[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                      _mm512_setzero_si512()};
    for (int k = 0; k < K; k += 4) {
      __m128i r[4][4]; /* [row][16-column block] */
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
          r[i][j] =
              _mm_loadu_si128((const __m128i *)(w + (size_t)(k + i) * N + stripe * 64 + 16 * j));
          sum[j] = _mm512_add_epi32(sum[j], _mm512_cvtepi8_epi32(r[i][j]));
        }
      for (int j = 0; j < 4; j++) {
        __m128i lo01 = _mm_unpacklo_epi8(r[0][j], r[1][j]);
        __m128i hi01 = _mm_unpackhi_epi8(r[0][j], r[1][j]);
        __m128i lo23 = _mm_unpacklo_epi8(r[2][j], r[3][j]);
        __m128i hi23 = _mm_unpackhi_epi8(r[2][j], r[3][j]);
        int8_t *dst = p.packed + ((size_t)(4 * stripe + j) * (K / 4) + k / 4) * 64;
        _mm_storeu_si128((__m128i *)dst, _mm_unpacklo_epi16(lo01, lo23));
        _mm_storeu_si128((__m128i *)(dst + 16), _mm_unpackhi_epi16(lo01, lo23));
        _mm_storeu_si128((__m128i *)(dst + 32), _mm_unpacklo_epi16(hi01, hi23));
        _mm_storeu_si128((__m128i *)(dst + 48), _mm_unpackhi_epi16(hi01, hi23));
      }
    }
    for (int j = 0; j < 4; j++) {
      int n = stripe * 64 + 16 * j;
      _mm512_storeu_si512(p.col_sums + n, sum[j]);
      _mm512_storeu_ps(p.scale + n, _mm512_loadu_ps(scale + n));
    }
  }
  return p;
}

/* acc: rows x 16 int32 at stride `ld` (A rows m ..), to y's rows x 16 floats starting at column
 * n; with two planes each pair of A rows is one row of y, (m + r) / 2. */
static inline void finish(const int32_t *acc, int ld, int rows, int planes, const Weights *w, int n,
                          const float *row_scale, float *y, int m) {
  __m512i fix = zero_fix(w, n);
  __m512 cs = _mm512_loadu_ps(w->scale + n);
  for (int r = 0; r < rows; r += planes) {
    const __m512i hi = _mm512_loadu_si512(acc + (size_t)r * ld);
    __m512 v = planes == 2 ? combine_planes(hi, _mm512_loadu_si512(acc + (size_t)(r + 1) * ld), fix)
                           : _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, fix));
    const int out = (m + r) / planes;
    _mm512_storeu_ps(y + (size_t)out * w->N + n,
                     _mm512_mul_ps(v, _mm512_mul_ps(cs, _mm512_set1_ps(row_scale[out]))));
  }
}

/* `rows` (1-3, a constant where it is inlined) rows of A against 64 columns (four packed
 * sixteen-column blocks at b), 16 zmm accumulators at most. */
static inline __attribute__((always_inline)) void vnni_block(const uint8_t *a, int K,
                                                             const int8_t *b, int rows,
                                                             int32_t out[4][64]) {
#ifndef __AVX512F__
  const uint8_t *ap[4] = {a, a + K, a + 2 * (size_t)K, a + 3 * (size_t)K};
  dot_any_avx2(ap, K, b, (size_t)(K / 4) * 64, rows, 4, out);
#else
  __m512i acc[4][4];
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_si512();
  for (int k4 = 0; k4 < K / 4; k4++) {
    __m512i bj[4];
    for (int j = 0; j < 4; j++) bj[j] = _mm512_load_si512(b + ((size_t)j * (K / 4) + k4) * 64);
    for (int r = 0; r < rows; r++) {
      __m512i ar = _mm512_set1_epi32(*(const int32_t *)(a + (size_t)r * K + 4 * k4));
      for (int j = 0; j < 4; j++) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], ar, bj[j]);
    }
  }
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < 4; j++) _mm512_store_si512(out[r] + 16 * j, acc[r][j]);
#endif
}

/* AVX-512 VNNI: blocks of 4 rows x 64 columns; the last block takes the 1-3 rows left, so one
 * decoding sequence costs one row's dot products, not four (two planes: a block is two rows'
 * planes, M even). N % 64 == 0. (Full blocks keep their own loop: through the switch they
 * measured 10-15% slower.) */
static void gemm_vnni(const uint8_t *a, int M, int planes, const Weights *w, const float *row_scale,
                      float *y) {
  const int K = w->K;
#pragma omp parallel for collapse(2) schedule(static)
  for (int nb = 0; nb < w->N / 64; nb++)
    for (int m = 0; m < M; m += 4) {
      const int8_t *b = w->packed + (size_t)(4 * nb) * (K / 4) * 64;
      const int rows = M - m < 4 ? M - m : 4;
      int32_t out[4][64] __attribute__((aligned(64)));
#ifdef __AVX512F__
      if (rows == 4) {
        __m512i acc[4][4];
        for (int r = 0; r < 4; r++)
          for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_si512();
        for (int k4 = 0; k4 < K / 4; k4++) {
          __m512i bj[4];
          for (int j = 0; j < 4; j++)
            bj[j] = _mm512_load_si512(b + ((size_t)j * (K / 4) + k4) * 64);
          for (int r = 0; r < 4; r++) {
            __m512i ar = _mm512_set1_epi32(*(const int32_t *)(a + (size_t)(m + r) * K + 4 * k4));
            for (int j = 0; j < 4; j++) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], ar, bj[j]);
          }
        }
        for (int r = 0; r < 4; r++)
          for (int j = 0; j < 4; j++) _mm512_store_si512(out[r] + 16 * j, acc[r][j]);
      } else
#endif
      if (rows == 1) {
        vnni_block(a + (size_t)m * K, K, b, 1, out);
      } else if (rows == 2) {
        vnni_block(a + (size_t)m * K, K, b, 2, out);
      } else if (rows == 3) {
        vnni_block(a + (size_t)m * K, K, b, 3, out);
      } else {
        vnni_block(a + (size_t)m * K, K, b, 4, out); /* the AVX2 build's full blocks */
      }
      for (int j = 0; j < 4; j++)
        finish(out[0] + 16 * j, 64, rows, planes, w, 64 * nb + 16 * j, row_scale, y, m);
    }
}

#ifdef __AMX_INT8__
typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} TileConfig;

static int amx_permitted(void) {
  /* Linux hands out the tile data registers only on request (ARCH_REQ_XCOMP_PERM, XTILEDATA). */
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

/* AMX: 32 rows x 32 columns a block (or 16 rows' two planes) in four accumulator tiles (0-3),
 * two A tiles (4, 5) and two B tiles (6, 7) per 64 K; a thread walks the rows for its column
 * pairs, so the columns' weights stay in its L2 while A streams. M % 32 == 0, N % 32 == 0,
 * K % 64 == 0. */
static void gemm_amx(const uint8_t *a, int M, int planes, const Weights *w, const float *row_scale,
                     float *y) {
  const int K = w->K;
#pragma omp parallel
  {
    TileConfig cfg = {0};
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
    _tile_loadconfig(&cfg);
    int32_t acc[32 * 32] __attribute__((aligned(64)));
#pragma omp for schedule(static)
    for (int nb = 0; nb < w->N / 32; nb++) {
      const int8_t *b0 = w->packed + (size_t)(2 * nb) * K * 16, *b1 = b0 + (size_t)K * 16;
      for (int m = 0; m < M; m += 32) {
        const uint8_t *a0 = a + (size_t)m * K, *a1 = a0 + (size_t)16 * K;
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
        for (int k = 0; k < K; k += 64) {
          _tile_loadd(4, a0 + k, K);
          _tile_loadd(5, a1 + k, K);
          _tile_loadd(6, b0 + (size_t)k * 16, 64);
          _tile_loadd(7, b1 + (size_t)k * 16, 64);
          _tile_dpbusd(0, 4, 6);
          _tile_dpbusd(1, 4, 7);
          _tile_dpbusd(2, 5, 6);
          _tile_dpbusd(3, 5, 7);
        }
        _tile_stored(0, acc, 128);
        _tile_stored(1, acc + 16, 128);
        _tile_stored(2, acc + 16 * 32, 128);
        _tile_stored(3, acc + 16 * 32 + 16, 128);
        finish(acc, 32, 32, planes, w, 32 * nb, row_scale, y, m);
        finish(acc + 16, 32, 32, planes, w, 32 * nb + 16, row_scale, y, m);
      }
    }
    _tile_release();
  }
}
#endif

