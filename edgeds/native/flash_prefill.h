/* Prompt attention in blocks (flash-attention style) for the dense decoder (decoder.c): a tile
 * of query rows (consecutive positions of one sequence, times the query heads of one KV head)
 * walks the cached keys in blocks of KEY_BLOCK positions with an online softmax, so each key
 * and value is read and converted once per tile, not once per row. Q.K^T and P.V are bf16
 * products accumulated in float32: AVX512_BF16's vdpbf16ps where the CPU has it, else the same
 * products in float32 FMAs in the order vdpbf16ps takes them (a bf16 product is exact in
 * float32); the AVX2 build takes float32 products (flash_prefill_avx2.h). Decode rows keep decoder.c's float32 attention: a row's path is its call's kind
 * (prompt or decode), as in mla_moe.c, so a row's result never depends on its batch.
 *
 * A row's arithmetic is its own: the key blocks are fixed positions, a row's softmax state
 * meets the blocks up to its own position in order, and masked keys add exact zeros, so a row
 * gives the same bits in any tile, in any call, whole or chunked.
 *
 * Why bf16: at 4,096 positions the 1.5B's prompt attention is ~1.4 TFLOP over 28 layers, about
 * as long in float32 FMAs on 16 cores as all of the prompt's int8 matmuls (issue 23's prefill
 * target leaves attention a quarter of that); vdpbf16ps does two multiply-adds a lane. */
#pragma once
#include <float.h>
#include "simd.h"
#include <math.h>
#include <stdint.h>
#include <string.h>


enum {
  KEY_BLOCK = 64
}; /* keys a softmax step covers (the loops take 4 x 16): decoder.c's cache block */

/* e^x for 16 lanes, to about 2 ulp: 2^n * p(r), r = x - n ln 2 in [-ln2/2, ln2/2], p of degree
 * 6. Below -80 it gives 0 (no subnormal weights: they cost Intel cores a microcode assist per
 * operation); e^0 is exactly 1. Deterministic: the same lanes give the same bits anywhere. */
static inline __m512 exp16(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-80.0f), _CMP_LT_OQ);
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-80.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(~tiny, p, n);
}

/* 32 floats (lo: elements 0-15, hi: 16-31) to 32 bf16 in order, rounded to nearest even,
 * subnormal inputs taken as zero: what vcvtne2ps2bf16 does, written out where it is missing. */
static inline __attribute__((always_inline)) __m512i to_bf16(__m512 lo, __m512 hi, const int hw) {
#ifdef __AVX512BF16__
  if (hw) return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
#endif
  (void)hw;
  __m512i u[2] = {_mm512_castps_si512(lo), _mm512_castps_si512(hi)};
  __m256i half[2];
  for (int i = 0; i < 2; i++) {
    const __m512i expo = _mm512_and_si512(u[i], _mm512_set1_epi32(0x7f800000));
    const __mmask16 sub = _mm512_cmpeq_epi32_mask(expo, _mm512_setzero_si512());
    __m512i v = _mm512_mask_and_epi32(u[i], sub, u[i], _mm512_set1_epi32((int)0x80000000u));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(v, 16), _mm512_set1_epi32(1));
    v = _mm512_add_epi32(v, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
    half[i] = _mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16));
  }
  return _mm512_inserti64x4(_mm512_castsi256_si512(half[0]), half[1], 1);
}

/* acc lane i += a.bf16[2i+1] * b.bf16[2i+1], then += a.bf16[2i] * b.bf16[2i] (vdpbf16ps). */
static inline __attribute__((always_inline)) __m512 dp(__m512 acc, __m512i a, __m512i b,
                                                       const int hw) {
#ifdef __AVX512BF16__
  if (hw) return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
#endif
  (void)hw;
  const __m512i top = _mm512_set1_epi32((int)0xffff0000u);
  acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(a, top)),
                        _mm512_castsi512_ps(_mm512_and_si512(b, top)), acc);
  return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(a, 16)),
                         _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)), acc);
}

static inline __m512 load_f(const void *base, int f16, size_t at) {
  return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + at)))
             : _mm512_loadu_ps((const float *)base + at);
}

/* One tile's attention over one KV head. Rows: n positions p0 .. p0 + n - 1, each with `group`
 * query heads; row rh = i * group + h reads its query at q + i * q_stride + h * D (float32,
 * rotated) and writes its output at out + i * out_stride + h * D. Key block j (positions
 * [j * KEY_BLOCK, (j + 1) * KEY_BLOCK)) lies at keys[ids[j]] / values[ids[j]] + at elements,
 * [KEY_BLOCK][D] float32 or float16. Scratch: prefill_scratch_bytes(). */
typedef struct {
  void *const *keys, *const *values; /* by block id */
  const int32_t *ids;                /* the sequence's block ids, in position order */
  size_t at;
  int f16;
} KeyBlocks;

static inline size_t round64(size_t bytes) { return (bytes + 63) / 64 * 64; }

/* Per thread: queries, keys and value pairs as bf16, weights as bf16, outputs and each row's
 * peak, sum and rescale as float32, each 64-byte aligned. */
#ifndef __AVX512F__
static inline size_t prefill_scratch_bytes_avx2(int rows, int D); /* flash_prefill_avx2.h */
#endif
static inline size_t prefill_scratch_bytes(int rows, int D) {
#ifndef __AVX512F__
  return prefill_scratch_bytes_avx2(rows, D);
#else
  const size_t Dp = (D + 31) / 32 * 32;
  return 64 + round64((size_t)rows * Dp * 2) + 2 * round64((size_t)KEY_BLOCK * Dp * 2) +
         round64((size_t)rows * KEY_BLOCK * 2) + round64((size_t)rows * D * 4) +
         3 * round64((size_t)rows * 4);
#endif
}

/* vdpbf16ps's V operand: lane d of pair k holds keys 2k (low half) and 2k + 1 of column d. */
static const uint16_t PAIR_ORDER[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                        21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                        11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

/* Keys [t0, t0 + 16) of a block that a row seeing `seen` of them attends to. */
static inline __mmask16 seen_mask(int seen, int t0) {
  return seen - t0 >= 16 ? 0xFFFF : seen - t0 <= 0 ? 0 : (__mmask16)((1u << (seen - t0)) - 1);
}

/* One row's online softmax over one key block: raw scores sc (4 x 16 keys), of which the first
 * `seen` count; its running peak and sum move on, keep is what its outputs so far are worth
 * now, w its weights (bf16, zeros past seen). */
static inline __attribute__((always_inline)) void softmax_step(const __m512 sc_raw[4], int seen,
                                                               float scale, float *peak, float *sum,
                                                               float *keep, uint16_t *w,
                                                               const int hw) {
  __m512 sc[4];
  for (int j = 0; j < 4; j++)
    sc[j] = _mm512_mask_mul_ps(_mm512_set1_ps(-FLT_MAX), seen_mask(seen, 16 * j), sc_raw[j],
                               _mm512_set1_ps(scale));
  const __m512 top = _mm512_max_ps(_mm512_max_ps(sc[0], sc[1]), _mm512_max_ps(sc[2], sc[3]));
  const float was = *peak, now = fmaxf(was, _mm512_reduce_max_ps(top));
  const float kept = _mm_cvtss_f32(_mm512_castps512_ps128(exp16(_mm512_set1_ps(was - now))));
  __m512 total = _mm512_setzero_ps();
  for (int t0 = 0; t0 < KEY_BLOCK; t0 += 32) {
    const __m512 w0 = _mm512_maskz_mov_ps(seen_mask(seen, t0),
                                          exp16(_mm512_sub_ps(sc[t0 / 16], _mm512_set1_ps(now))));
    const __m512 w1 = _mm512_maskz_mov_ps(
        seen_mask(seen, t0 + 16), exp16(_mm512_sub_ps(sc[t0 / 16 + 1], _mm512_set1_ps(now))));
    total = _mm512_add_ps(total, _mm512_add_ps(w0, w1));
    _mm512_storeu_si512(w + t0, to_bf16(w0, w1, hw));
  }
  *peak = now;
  *sum = *sum * kept + _mm512_reduce_add_ps(total);
  *keep = kept;
}

/* The tile's query rows (n positions x `group` heads, D floats each) as bf16 rows of Dp = D
 * rounded up to 32 columns, the padding zero. */
static inline __attribute__((always_inline)) void queries_bf16(uint16_t *qb, const float *q,
                                                               size_t q_stride, int n, int group,
                                                               int D, const int hw) {
  const int X = (D + 31) / 32, Dp = 32 * X;
  for (int i = 0; i < n; i++)
    for (int h = 0; h < group; h++) {
      const float *src = q + i * q_stride + (size_t)h * D;
      for (int x = 0; x < X; x++)
        _mm512_store_si512(
            qb + (size_t)(i * group + h) * Dp + 32 * x,
            to_bf16(_mm512_loadu_ps(src + 32 * x),
                    32 * x + 16 < D ? _mm512_loadu_ps(src + 32 * x + 16) : _mm512_setzero_ps(),
                    hw));
    }
}

/* 16 x 16 32-bit lanes transposed: lane j of r[i] becomes lane i of r[j]. The tiles' K^T
 * packing: sixteen keys' vdpbf16ps pairs in, sixteen vectors of one pair of each key out. */
static inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int h = 0; h < 2; h++)
    for (int i = 0; i < 4; i++) {
      t[8 * h + i] = _mm512_shuffle_i32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_i32x4(r[8 * h + i], r[8 * h + 4 + i], 0xdd);
    }
  for (int i = 0; i < 8; i++) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xdd);
  }
}

/* The first 16 `groups` keys of a block (keys past nk zero) as K^T vdpbf16ps pairs, kt
 * [groups][X][16 pairs][16 keys]: what the score passes and the AMX B tiles read. */
static inline __attribute__((always_inline)) void pack_keys_t(const KeyBlocks *kv,
                                                              const void *kbase, int nk,
                                                              int groups, const int D,
                                                              uint32_t *kt, const int hw) {
  const int X = (D + 31) / 32;
  for (int kg = 0; kg < groups; kg++)
    for (int x = 0; x < X; x++) {
      __m512i r[16];
      for (int t = 0; t < 16; t++) {
        const int key = 16 * kg + t;
        const size_t at = kv->at + (size_t)key * D + 32 * x;
        const __m512 lo = key < nk ? load_f(kbase, kv->f16, at) : _mm512_setzero_ps();
        const __m512 hi =
            key < nk && 32 * x + 16 < D ? load_f(kbase, kv->f16, at + 16) : _mm512_setzero_ps();
        r[t] = to_bf16(lo, hi, hw);
      }
      transpose16(r);
      for (int p = 0; p < 16; p++)
        _mm512_store_si512(kt + ((size_t)(kg * X + x) * 16 + p) * 16, r[p]);
    }
}

/* Rows a pass holds: 4 x 4 accumulators and 4 key or value vectors of the 32 registers. */
enum { SCORE_ROWS = 4, VALUE_ROWS = 4 };

/* Raw scores of SCORE_ROWS query rows (their bf16 pairs at qp[i]) against the block's first 16 J
 * keys, kt's K^T pairs ([J][X][16 pairs][16 keys]): lane t of sc[i][j] is row i's product with
 * key 16 j + t, its pairs summed in order. Each key vector serves every row and each row's pair
 * is one broadcast: no horizontal sums. Groups past J score -FLT_MAX. */
static inline __attribute__((always_inline)) void block_scores(const uint32_t *const *qp,
                                                               const uint32_t *kt, const int X,
                                                               const int J, __m512 sc[][4],
                                                               const int hw) {
  __m512 acc[SCORE_ROWS][4];
  for (int i = 0; i < SCORE_ROWS; i++)
    for (int j = 0; j < J; j++) acc[i][j] = _mm512_setzero_ps();
  for (int x = 0; x < X; x++)
    for (int p = 0; p < 16; p++) {
      __m512i k[4];
      for (int j = 0; j < J; j++)
        k[j] = _mm512_load_si512(kt + ((size_t)(j * X + x) * 16 + p) * 16);
      for (int i = 0; i < SCORE_ROWS; i++) {
        const __m512i a = _mm512_set1_epi32((int)qp[i][16 * x + p]);
        for (int j = 0; j < J; j++) acc[i][j] = dp(acc[i][j], a, k[j], hw);
      }
    }
  for (int i = 0; i < SCORE_ROWS; i++)
    for (int j = 0; j < 4; j++) sc[i][j] = j < J ? acc[i][j] : _mm512_set1_ps(-FLT_MAX);
}

static inline __attribute__((always_inline)) void
prefill_tile_impl(const KeyBlocks *kv, int D, int group, int n, int p0, const float *q,
                  size_t q_stride, float *out, size_t out_stride, void *scratch, const int hw) {
  const int rows = n * group, X = (D + 31) / 32, Dp = 32 * X; /* bf16 rows padded to 32 columns */
  char *s = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  uint16_t *qb = (uint16_t *)s;
  uint32_t *kt = (uint32_t *)(s += round64((size_t)rows * Dp * 2)); /* [4][X][16][16] */
  uint16_t *vb = (uint16_t *)(s += round64((size_t)KEY_BLOCK * Dp * 2));
  uint16_t *pb = (uint16_t *)(s += round64((size_t)KEY_BLOCK * D * 2));
  float *o = (float *)(s += round64((size_t)rows * KEY_BLOCK * 2));
  float *peak = (float *)(s += round64((size_t)rows * D * 4));
  float *sum = (float *)(s += round64((size_t)rows * 4)),
        *keep = (float *)(s + round64((size_t)rows * 4));
  const float scale = 1.0f / sqrtf((float)D);
  const __m512i order = _mm512_loadu_si512(PAIR_ORDER);
  queries_bf16(qb, q, q_stride, n, group, D, hw);
  for (int r = 0; r < rows; r++) peak[r] = -FLT_MAX, sum[r] = 0;
  memset(o, 0, (size_t)rows * D * sizeof(float));
  const int last = p0 + n - 1;
  for (int b0 = 0; b0 <= last; b0 += KEY_BLOCK) {
    const int nk = last + 1 - b0 < KEY_BLOCK ? last + 1 - b0 : KEY_BLOCK; /* keys any row sees */
    const int nk16 = (nk + 15) / 16 * 16, pairs = (nk + 1) / 2;
    const void *kbase = kv->keys[kv->ids[b0 / KEY_BLOCK]],
               *vbase = kv->values[kv->ids[b0 / KEY_BLOCK]];
    /* Keys past nk are zeros (never stale cache contents: a NaN there would survive 0 x it). */
    pack_keys_t(kv, kbase, nk, nk16 / 16, D, kt, hw);
    for (int k = 0; k < pairs; k++)
      for (int c = 0; c < D; c += 16) {
        const size_t at = kv->at + (size_t)2 * k * D + c;
        const __m512 v0 = load_f(vbase, kv->f16, at);
        const __m512 v1 = 2 * k + 1 < nk ? load_f(vbase, kv->f16, at + D) : _mm512_setzero_ps();
        _mm512_store_si512(vb + ((size_t)k * D + c) * 2,
                           _mm512_permutexvar_epi16(order, to_bf16(v0, v1, hw)));
      }
    for (int r0 = 0; r0 < rows; r0 += SCORE_ROWS) {
      const uint32_t *qp[SCORE_ROWS]; /* rows past the tile's repeat its last (not kept) */
      for (int i = 0; i < SCORE_ROWS; i++)
        qp[i] = (const uint32_t *)(qb + (size_t)(r0 + i < rows ? r0 + i : rows - 1) * Dp);
      __m512 sc[SCORE_ROWS][4];
      switch (nk16 / 16) {
        case 1: block_scores(qp, kt, X, 1, sc, hw); break;
        case 2: block_scores(qp, kt, X, 2, sc, hw); break;
        case 3: block_scores(qp, kt, X, 3, sc, hw); break;
        default: block_scores(qp, kt, X, 4, sc, hw);
      }
      for (int i = 0; i < SCORE_ROWS && r0 + i < rows; i++) {
        const int r = r0 + i, seen = p0 + r / group + 1 - b0; /* keys of this block it sees */
        if (seen > 0)
          softmax_step(sc[i], seen, scale, peak + r, sum + r, keep + r,
                       pb + (size_t)r * KEY_BLOCK, hw);
      }
    }
    /* O = O * keep + P V, VALUE_ROWS rows over 64 columns a pass: each value pair load serves
     * every row, each row's weight pair is one broadcast. Rows past the tile's repeat its last
     * and rows that see none of the block are computed but not stored. */
    for (int r0 = 0; r0 < rows; r0 += VALUE_ROWS) {
      const uint32_t *w[VALUE_ROWS];
      int row[VALUE_ROWS], store[VALUE_ROWS];
      for (int i = 0; i < VALUE_ROWS; i++) {
        row[i] = r0 + i < rows ? r0 + i : rows - 1;
        w[i] = (const uint32_t *)(pb + (size_t)row[i] * KEY_BLOCK);
        store[i] = r0 + i < rows && p0 + row[i] / group + 1 - b0 > 0;
      }
      for (int c0 = 0; c0 < D; c0 += 64) {
        const int C = D - c0 < 64 ? (D - c0) / 16 : 4;
        __m512 acc[VALUE_ROWS][4];
        for (int i = 0; i < VALUE_ROWS; i++)
          for (int x = 0; x < C; x++)
            acc[i][x] = _mm512_mul_ps(_mm512_loadu_ps(o + (size_t)row[i] * D + c0 + 16 * x),
                                      _mm512_set1_ps(keep[row[i]]));
        for (int k = 0; k < pairs; k++) {
          __m512i v[4];
          for (int x = 0; x < C; x++)
            v[x] = _mm512_load_si512(vb + ((size_t)k * D + c0 + 16 * x) * 2);
          for (int i = 0; i < VALUE_ROWS; i++) {
            const __m512i a = _mm512_set1_epi32((int)w[i][k]);
            for (int x = 0; x < C; x++) acc[i][x] = dp(acc[i][x], a, v[x], hw);
          }
        }
        for (int i = 0; i < VALUE_ROWS; i++)
          if (store[i])
            for (int x = 0; x < C; x++)
              _mm512_storeu_ps(o + (size_t)(r0 + i) * D + c0 + 16 * x, acc[i][x]);
      }
    }
  }
  for (int i = 0; i < n; i++)
    for (int h = 0; h < group; h++) {
      const int r = i * group + h;
      const __m512 inv = _mm512_set1_ps(1.0f / sum[r]);
      for (int c = 0; c < D; c += 16)
        _mm512_storeu_ps(out + i * out_stride + (size_t)h * D + c,
                         _mm512_mul_ps(_mm512_loadu_ps(o + (size_t)r * D + c), inv));
    }
}

/* The two instruction sets' copies (noinline: one copy each of the float arithmetic), each with
 * the common head widths as constants: their loops over D unroll (a variable D cost a compare
 * per multiply-add). Every width computes the same thing. */
#define PREFILL_TILE(name, hw)                                                                     \
  static __attribute__((noinline)) void name(const KeyBlocks *kv, int D, int group, int n, int p0, \
                                             const float *q, size_t q_stride, float *out,          \
                                             size_t out_stride, void *scratch) {                   \
    if (D == 128)                                                                                  \
      prefill_tile_impl(kv, 128, group, n, p0, q, q_stride, out, out_stride, scratch, hw);         \
    else if (D == 64)                                                                              \
      prefill_tile_impl(kv, 64, group, n, p0, q, q_stride, out, out_stride, scratch, hw);          \
    else                                                                                           \
      prefill_tile_impl(kv, D, group, n, p0, q, q_stride, out, out_stride, scratch, hw);           \
  }
#ifdef __AVX512F__
PREFILL_TILE(prefill_tile_fma, 0)
#else
#include "flash_prefill_avx2.h"
#endif
#ifdef __AVX512BF16__
PREFILL_TILE(prefill_tile_bf16, 1)
#endif

#ifdef __AMX_BF16__
/* AMX: the tile's rows in groups of 16 (an A tile), keys in fours of 16 (B tiles of K^T in
 * vdpbf16ps pairs, packed once per block: a 16 x 16 transpose of 32-bit pairs), S = Q K^T in
 * four accumulator tiles, the softmax as above, then P V from the weights (A tiles, as stored)
 * and the value pairs (B tiles, as stored). Each element of a tile product depends on its own
 * row and column only, so a row's result is the same in any tile here too; it is not the
 * vdpbf16ps kernel's (the tiles sum in their own order): a process takes one of them. */
static inline size_t amx_scratch_bytes(int rows, int D) {
  const size_t R = (size_t)(rows + 15) / 16 * 16, Dp = (D + 31) / 32 * 32;
  return 64 + round64(R * Dp * 2) + 2 * round64((size_t)KEY_BLOCK * Dp * 2) +
         round64(R * KEY_BLOCK * 6) + round64(16 * KEY_BLOCK * 4) + round64((size_t)rows * D * 4) +
         3 * round64((size_t)rows * 4);
}

typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} PromptTileConfig;

static inline __attribute__((always_inline)) void
prefill_tile_amx_impl(const KeyBlocks *kv, int D, int group, int n, int p0, const float *q,
                      size_t q_stride, float *out, size_t out_stride, void *scratch) {
  const int rows = n * group, groups = (rows + 15) / 16, X = (D + 31) / 32, Dp = 32 * X,
            DG = D / 16;
  char *s = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  uint16_t *qb = (uint16_t *)s;
  uint32_t *kt = (uint32_t *)(s += round64((size_t)groups * 16 * Dp * 2)); /* [4][X][16][16] */
  uint16_t *vb = (uint16_t *)(s += round64((size_t)KEY_BLOCK * Dp * 2));
  float *S = (float *)(s += round64((size_t)KEY_BLOCK * Dp * 2)); /* [groups * 16][64] */
  uint16_t *pb = (uint16_t *)(S + (size_t)groups * 16 * KEY_BLOCK);
  float *tmp = (float *)(s += round64((size_t)groups * 16 * KEY_BLOCK * 6)); /* [16][64] */
  float *o = (float *)(s += round64(16 * KEY_BLOCK * 4));
  float *peak = (float *)(s += round64((size_t)rows * D * 4));
  float *sum = (float *)(s += round64((size_t)rows * 4)),
        *keep = (float *)(s + round64((size_t)rows * 4));
  const float scale = 1.0f / sqrtf((float)D);
  const __m512i order = _mm512_loadu_si512(PAIR_ORDER);
  PromptTileConfig cfg = {0};
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
  memset(qb, 0, (size_t)groups * 16 * Dp * 2); /* rows past the tile's: zeros, never read out */
  memset(pb, 0, (size_t)groups * 16 * KEY_BLOCK * 2);
  queries_bf16(qb, q, q_stride, n, group, D, 1);
  for (int r = 0; r < rows; r++) peak[r] = -FLT_MAX, sum[r] = 0;
  memset(o, 0, (size_t)rows * D * sizeof(float));
  const int last = p0 + n - 1;
  for (int b0 = 0; b0 <= last; b0 += KEY_BLOCK) {
    const int nk = last + 1 - b0 < KEY_BLOCK ? last + 1 - b0 : KEY_BLOCK;
    const void *kbase = kv->keys[kv->ids[b0 / KEY_BLOCK]],
               *vbase = kv->values[kv->ids[b0 / KEY_BLOCK]];
    /* Every key and value of the block is packed (zeros past nk): the tiles take all 64. */
    pack_keys_t(kv, kbase, nk, 4, D, kt, 1);
    for (int k = 0; k < KEY_BLOCK / 2; k++)
      for (int c = 0; c < D; c += 16) {
        const size_t at = kv->at + (size_t)2 * k * D + c;
        const __m512 v0 = 2 * k < nk ? load_f(vbase, kv->f16, at) : _mm512_setzero_ps();
        const __m512 v1 = 2 * k + 1 < nk ? load_f(vbase, kv->f16, at + D) : _mm512_setzero_ps();
        _mm512_store_si512(vb + ((size_t)k * D + c) * 2,
                           _mm512_permutexvar_epi16(order, to_bf16(v0, v1, 1)));
      }
    for (int gr = 0; gr < groups; gr++) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int x = 0; x < X; x++) {
        _tile_loadd(4, qb + (size_t)gr * 16 * Dp + 32 * x, Dp * 2);
        _tile_loadd(5, kt + (size_t)(0 * X + x) * 256, 64);
        _tile_loadd(6, kt + (size_t)(1 * X + x) * 256, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(5, kt + (size_t)(2 * X + x) * 256, 64);
        _tile_loadd(6, kt + (size_t)(3 * X + x) * 256, 64);
        _tile_dpbf16ps(2, 4, 5);
        _tile_dpbf16ps(3, 4, 6);
      }
      float *sg = S + (size_t)gr * 16 * KEY_BLOCK;
      _tile_stored(0, sg, KEY_BLOCK * 4);
      _tile_stored(1, sg + 16, KEY_BLOCK * 4);
      _tile_stored(2, sg + 32, KEY_BLOCK * 4);
      _tile_stored(3, sg + 48, KEY_BLOCK * 4);
    }
    for (int r = 0; r < rows; r++) {
      const int seen = p0 + r / group + 1 - b0;
      if (seen <= 0) continue;
      __m512 sc[4];
      for (int j = 0; j < 4; j++) sc[j] = _mm512_load_ps(S + (size_t)r * KEY_BLOCK + 16 * j);
      softmax_step(sc, seen, scale, peak + r, sum + r, keep + r, pb + (size_t)r * KEY_BLOCK, 1);
    }
    for (int gr = 0; gr < groups; gr++)
      for (int d0 = 0; d0 < DG; d0 += 4) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int ks = 0; ks < 2; ks++) {
          const uint16_t *vk = vb + (size_t)ks * 16 * D * 2;
          _tile_loadd(4, pb + (size_t)gr * 16 * KEY_BLOCK + 32 * ks, KEY_BLOCK * 2);
          _tile_loadd(5, vk + (size_t)d0 * 16 * 2, D * 4);
          _tile_dpbf16ps(0, 4, 5);
          if (d0 + 1 < DG) {
            _tile_loadd(6, vk + (size_t)(d0 + 1) * 16 * 2, D * 4);
            _tile_dpbf16ps(1, 4, 6);
          }
          if (d0 + 2 < DG) {
            _tile_loadd(5, vk + (size_t)(d0 + 2) * 16 * 2, D * 4);
            _tile_dpbf16ps(2, 4, 5);
          }
          if (d0 + 3 < DG) {
            _tile_loadd(6, vk + (size_t)(d0 + 3) * 16 * 2, D * 4);
            _tile_dpbf16ps(3, 4, 6);
          }
        }
        _tile_stored(0, tmp, KEY_BLOCK * 4);
        _tile_stored(1, tmp + 16, KEY_BLOCK * 4);
        _tile_stored(2, tmp + 32, KEY_BLOCK * 4);
        _tile_stored(3, tmp + 48, KEY_BLOCK * 4);
        const int cols = DG - d0 < 4 ? DG - d0 : 4;
        for (int j = 0; j < 16 && gr * 16 + j < rows; j++) {
          const int r = gr * 16 + j;
          if (p0 + r / group + 1 - b0 <= 0) continue;
          const __m512 kr = _mm512_set1_ps(keep[r]);
          for (int c = 0; c < cols; c++) {
            float *od = o + (size_t)r * D + (d0 + c) * 16;
            _mm512_storeu_ps(od, _mm512_fmadd_ps(_mm512_loadu_ps(od), kr,
                                                 _mm512_load_ps(tmp + j * KEY_BLOCK + 16 * c)));
          }
        }
      }
  }
  _tile_release();
  for (int r = 0; r < rows; r++) {
    const __m512 inv = _mm512_set1_ps(1.0f / sum[r]);
    for (int c = 0; c < D; c += 16)
      _mm512_storeu_ps(out + (r / group) * out_stride + (size_t)(r % group) * D + c,
                       _mm512_mul_ps(_mm512_loadu_ps(o + (size_t)r * D + c), inv));
  }
}

static __attribute__((noinline)) void prefill_tile_amx(const KeyBlocks *kv, int D, int group, int n,
                                                       int p0, const float *q, size_t q_stride,
                                                       float *out, size_t out_stride,
                                                       void *scratch) {
  if (D == 128)
    prefill_tile_amx_impl(kv, 128, group, n, p0, q, q_stride, out, out_stride, scratch);
  else if (D == 64)
    prefill_tile_amx_impl(kv, 64, group, n, p0, q, q_stride, out, out_stride, scratch);
  else
    prefill_tile_amx_impl(kv, D, group, n, p0, q, q_stride, out, out_stride, scratch);
}
#endif

/* The CPU runs vdpbf16ps (and the library was built with it). */
static inline int bf16_supported(void) {
#ifdef __AVX512BF16__
  return __builtin_cpu_supports("avx512bf16");
#else
  return 0;
#endif
}
