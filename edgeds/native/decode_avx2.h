/* Decode attention's two inner loops (decoder.c's attend_split) for the AVX2 build, in 256-bit
 * registers. Through avx512_on_avx2.h the AVX-512 loops hold 16 keys' dot products, or six heads
 * x 64 columns of value sums, in 32 vectors of two halves each: 64 of the 16 registers AVX2 has,
 * so every multiply-add went through memory (one core reached 5.8 GFMA/s of its ~45 at 16,384
 * positions). These hold 8 products of 2 heads x 4 keys, or 6 heads x 16 columns, in registers.
 *
 * The arithmetic is fixed by the shape alone, as decoder.c's: a head's dot products add their
 * columns in one order whatever the other heads of its pass, and its value sums add keys in order
 * one multiply-add at a time, so a row's bits never depend on its batch or its threads. They are
 * not the AVX-512 build's bits (another reduction order): each build is its own reference. */
#pragma once
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

/* The sums of a, b, c, d's lanes, in that order. */
static inline __attribute__((always_inline)) __m128 sums4_avx2(__m256 a, __m256 b, __m256 c,
                                                              __m256 d) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

/* out[h * stride + t] = scale * q[h] . keys[t] for H (1-3) heads from q, 16 keys (D floats each,
 * zeros past the split). Each key column is loaded once into a register for the H heads (the
 * empty asm keeps gcc from folding it into each multiply-add as a memory operand: Zen's one
 * 256-bit load a cycle was the limit then), 3 x 4 sums + 3 queries + the key: 16 registers. */
static inline __attribute__((always_inline)) void
scores_heads_avx2(const float *keys, const float *q, float scale, float *out, size_t stride,
                  const int H, const int D) {
  for (int k0 = 0; k0 < 16; k0 += 4) {
    __m256 acc[3][4];
    for (int h = 0; h < H; h++)
      for (int k = 0; k < 4; k++) acc[h][k] = _mm256_setzero_ps();
    for (int x = 0; x < D; x += 8) {
      __m256 qx[3];
      for (int h = 0; h < H; h++) qx[h] = _mm256_loadu_ps(q + (size_t)h * D + x);
      for (int k = 0; k < 4; k++) {
        __m256 key = _mm256_loadu_ps(keys + (size_t)(k0 + k) * D + x);
        __asm__("" : "+x"(key));
        for (int h = 0; h < H; h++) acc[h][k] = _mm256_fmadd_ps(qx[h], key, acc[h][k]);
      }
    }
    for (int h = 0; h < H; h++)
      _mm_storeu_ps(out + h * stride + k0, _mm_mul_ps(sums4_avx2(acc[h][0], acc[h][1], acc[h][2],
                                                                 acc[h][3]),
                                                      _mm_set1_ps(scale)));
  }
}

/* A row's scores against 16 keys for all `group` heads, three heads at a time. All 16 are
 * written (the caller's softmax reads only the keys the row sees). */
static inline void scores16_avx2(const float *keys, const float *q, int group, float scale,
                                 float *out, size_t stride, const int D) {
  int h = 0;
  for (; h + 3 <= group; h += 3)
    scores_heads_avx2(keys, q + (size_t)h * D, scale, out + h * stride, stride, 3, D);
  if (group - h == 2)
    scores_heads_avx2(keys, q + (size_t)h * D, scale, out + h * stride, stride, 2, D);
  else if (group - h == 1)
    scores_heads_avx2(keys, q + (size_t)h * D, scale, out + h * stride, stride, 1, D);
}

static inline __attribute__((always_inline)) __m256 load8_avx2(const void *base, int f16,
                                                              size_t at) {
  return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)base + at)))
             : _mm256_loadu_ps((const float *)base + at);
}

/* out[j * ost + c] = sum over t of w[j * wstride + t] * value t's column c, for `heads` (at most
 * 6) heads and every column c < D, the n values lying in runs: run r holds count[r] consecutive
 * rows of D elements from rows[r]. 16 columns a pass, each value loaded once a pass for all the
 * heads, over CHUNK keys at a time (the sums kept in out between chunks, in order: the same
 * bits): a pass reads one line of each row, so the chunk's lines must be in L1 by then. Each
 * key of a pass prefetches one line of the next chunk, a line a step (a burst of a whole chunk's
 * prefetches outruns the load queue, and most are dropped). */
enum { CHUNK = 32, MAX_CHUNKS = 8 }; /* a decode split's 256 keys, or a prompt's key block */
static inline __attribute__((always_inline)) void
values_avx2(const void *const *rows, const int *count, int runs, int f16, const float *w,
            size_t wstride, float *out, size_t ost, const int heads, const int D) {
  const int elem = f16 ? 2 : 4, lines = D * elem / 64; /* lines of a row: the passes at most */
  const char *base[MAX_CHUNKS + 1];
  int len[MAX_CHUNKS + 1], chunks = 0;
  for (int r = 0; r < runs; r++)
    for (int i = 0; i < count[r]; i += CHUNK, chunks++) {
      base[chunks] = (const char *)rows[r] + (size_t)i * D * elem;
      len[chunks] = count[r] - i < CHUNK ? count[r] - i : CHUNK;
    }
  base[chunks] = NULL;
  for (int c = 0, t0 = 0; c < chunks; t0 += len[c], c++) {
    const char *next = base[c + 1];
    for (int x0 = 0, pass = 0; x0 < D; x0 += 16, pass++) {
      __m256 acc[6][2];
      for (int j = 0; j < heads; j++)
        if (c == 0) acc[j][0] = acc[j][1] = _mm256_setzero_ps();
        else
          acc[j][0] = _mm256_loadu_ps(out + j * ost + x0),
          acc[j][1] = _mm256_loadu_ps(out + j * ost + x0 + 8);
      for (int i = 0; i < len[c]; i++) {
        if (next && pass < lines && i < len[c + 1])
          _mm_prefetch(next + ((size_t)i * D * elem) + 64 * pass, _MM_HINT_T0);
        const size_t at = (size_t)i * D + x0;
        const __m256 v0 = load8_avx2(base[c], f16, at), v1 = load8_avx2(base[c], f16, at + 8);
        for (int j = 0; j < heads; j++) {
          const __m256 wt = _mm256_broadcast_ss(w + j * wstride + t0 + i);
          acc[j][0] = _mm256_fmadd_ps(wt, v0, acc[j][0]);
          acc[j][1] = _mm256_fmadd_ps(wt, v1, acc[j][1]);
        }
      }
      for (int j = 0; j < heads; j++) {
        _mm256_storeu_ps(out + j * ost + x0, acc[j][0]);
        _mm256_storeu_ps(out + j * ost + x0 + 8, acc[j][1]);
      }
    }
  }
}

/* ---- the MLA decoder's (mla_moe.c's dots and weigh, over the latent cache) ---- */

/* out[i * 4 + j] = q[i] . row j, for H (1 or 2) heads and 4 rows of D values (float32, or half:
 * float16), each row's column loaded once into a register for the H heads. */
static inline __attribute__((always_inline)) void
latent_dots_pass(const float *const *q, const void *const *k, int D, const int H, const int half,
                 float *out, int ld) {
  __m256 acc[2][4];
  for (int h = 0; h < H; h++)
    for (int j = 0; j < 4; j++) acc[h][j] = _mm256_setzero_ps();
  for (int x = 0; x < D; x += 8) {
    __m256 qx[2];
    for (int h = 0; h < H; h++) qx[h] = _mm256_loadu_ps(q[h] + x);
    for (int j = 0; j < 4; j++) {
      __m256 key = load8_avx2(k[j], half, x);
      __asm__("" : "+x"(key));
      for (int h = 0; h < H; h++) acc[h][j] = _mm256_fmadd_ps(qx[h], key, acc[h][j]);
    }
  }
  for (int h = 0; h < H; h++)
    _mm_storeu_ps(out + h * ld, sums4_avx2(acc[h][0], acc[h][1], acc[h][2], acc[h][3]));
}

/* mla_moe.c's dots(): out[i * (16 / HB) + j] = q[i] . k[j] for HB (4 or 1) heads and 16 / HB
 * rows. A score's sum is the same whatever shares its pass. */
static inline __attribute__((always_inline)) void latent_dots_avx2(const float *const *q,
                                                                   const void *const *k, int D,
                                                                   const int HB, const int half,
                                                                   float out[16]) {
  if (HB == 4) {
    latent_dots_pass(q, k, D, 2, half, out, 4);
    latent_dots_pass(q + 2, k, D, 2, half, out + 8, 4);
    return;
  }
  for (int j0 = 0; j0 < 16; j0 += 4) latent_dots_pass(q, k + j0, D, 1, half, out + j0, 4);
}

/* mla_moe.c's weigh(): out[i][16 c ..] = sum over rows t of w[i][t] * row t's columns, for HB
 * (4 or 1) heads and CB sixteen-column blocks, rows in order one multiply-add at a time: four
 * heads a block a pass, or one head four blocks. */
static inline __attribute__((always_inline)) void
latent_weigh_avx2(const float *const *w, const void *kv, int len, int D, float *const *out,
                  const int HB, const int CB, const int half) {
  const int BP = HB == 4 ? 1 : 4, elem = half ? 2 : 4;
  for (int c0 = 0; c0 < CB; c0 += BP) {
    const int nb = CB - c0 < BP ? CB - c0 : BP;
    __m256 acc[4][4][2];
    for (int i = 0; i < HB; i++)
      for (int c = 0; c < nb; c++) acc[i][c][0] = acc[i][c][1] = _mm256_setzero_ps();
    for (int t = 0; t < len; t++) {
      const void *row = (const char *)kv + (size_t)t * D * elem;
      for (int c = 0; c < nb; c++) {
        const __m256 v0 = load8_avx2(row, half, 16 * (c0 + c)),
                     v1 = load8_avx2(row, half, 16 * (c0 + c) + 8);
        for (int i = 0; i < HB; i++) {
          const __m256 p = _mm256_broadcast_ss(w[i] + t);
          acc[i][c][0] = _mm256_fmadd_ps(p, v0, acc[i][c][0]);
          acc[i][c][1] = _mm256_fmadd_ps(p, v1, acc[i][c][1]);
        }
      }
    }
    for (int i = 0; i < HB; i++)
      for (int c = 0; c < nb; c++) {
        _mm256_storeu_ps(out[i] + 16 * (c0 + c), acc[i][c][0]);
        _mm256_storeu_ps(out[i] + 16 * (c0 + c) + 8, acc[i][c][1]);
      }
  }
}
