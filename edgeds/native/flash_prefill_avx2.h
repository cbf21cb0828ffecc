/* flash_prefill.h's tile for the AVX2 build: the same blocks, online softmax and masking, in
 * float32 products (no bf16 rounding: AVX2 has no vdpbf16ps to pay for it) and 256-bit
 * registers. The AVX-512 kernel, through avx512_on_avx2.h's halves, held 16 keys' sums and a
 * query's 8 column pairs in 48 of the 16 registers AVX2 has and ran from memory. Here Q.K^T
 * and P.V are decode_avx2.h's loops: two heads x four keys, and six rows x 16 columns, a pass.
 *
 * A row's arithmetic is still its own (its dot products, softmax and value sums do not depend
 * on the rows beside it), so a row gives the same bits in any tile, whole or chunked. */
#pragma once
#include "decode_avx2.h"

static inline size_t prefill_scratch_bytes_avx2(int rows, int D) {
  return 64 + round64((size_t)KEY_BLOCK * D * 4) + round64((size_t)rows * KEY_BLOCK * 4) +
         2 * round64((size_t)rows * D * 4) + 3 * round64((size_t)rows * 4);
}

/* A row's scaled scores sc (its first `seen` of the block's keys count) -> its weights in place
 * (zeros up to nk, the keys any row of the tile sees), its running peak and sum moved on, keep
 * what its outputs so far are worth now. A row that sees none of the block keeps all. */
static inline void softmax_f32(float *sc, int seen, int nk, float *peak, float *sum, float *keep) {
  if (seen <= 0) {
    memset(sc, 0, (size_t)nk * sizeof(float));
    *keep = 1;
    return;
  }
  __m512 top = _mm512_set1_ps(-FLT_MAX);
  for (int t0 = 0; t0 < seen; t0 += 16)
    top = _mm512_mask_max_ps(top, seen_mask(seen, t0), top, _mm512_loadu_ps(sc + t0));
  const float was = *peak, now = fmaxf(was, _mm512_reduce_max_ps(top));
  const float kept = _mm_cvtss_f32(_mm512_castps512_ps128(exp16(_mm512_set1_ps(was - now))));
  __m512 total = _mm512_setzero_ps();
  for (int t0 = 0; t0 < nk; t0 += 16) {
    const __m512 w = _mm512_maskz_mov_ps(
        seen_mask(seen, t0), exp16(_mm512_sub_ps(_mm512_loadu_ps(sc + t0), _mm512_set1_ps(now))));
    total = _mm512_add_ps(total, w);
    _mm512_storeu_ps(sc + t0, w);
  }
  *peak = now;
  *sum = *sum * kept + _mm512_reduce_add_ps(total);
  *keep = kept;
}

static inline __attribute__((always_inline)) void
prefill_tile_avx2_impl(const KeyBlocks *kv, int D, int group, int n, int p0, const float *q,
                       size_t q_stride, float *out, size_t out_stride, void *scratch) {
  const int rows = n * group, elem = kv->f16 ? 2 : 4;
  char *s = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  float *keys = (float *)s;
  float *p = (float *)(s += round64((size_t)KEY_BLOCK * D * 4));
  float *o = (float *)(s += round64((size_t)rows * KEY_BLOCK * 4));
  float *pv = (float *)(s += round64((size_t)rows * D * 4));
  float *peak = (float *)(s += round64((size_t)rows * D * 4));
  float *sum = (float *)(s += round64((size_t)rows * 4)),
        *keep = (float *)(s + round64((size_t)rows * 4));
  const float scale = 1.0f / sqrtf((float)D);
  for (int r = 0; r < rows; r++) peak[r] = -FLT_MAX, sum[r] = 0;
  memset(o, 0, (size_t)rows * D * sizeof(float));
  const int last = p0 + n - 1;
  for (int b0 = 0; b0 <= last; b0 += KEY_BLOCK) {
    const int nk = last + 1 - b0 < KEY_BLOCK ? last + 1 - b0 : KEY_BLOCK; /* keys any row sees */
    const int nk16 = (nk + 15) / 16 * 16;
    const void *kbase = kv->keys[kv->ids[b0 / KEY_BLOCK]],
               *vbase = kv->values[kv->ids[b0 / KEY_BLOCK]];
    /* The keys as aligned float32, zeros past nk (never stale cache contents). */
    for (int t = 0; t < nk16; t++)
      for (int c = 0; c < D; c += 8)
        _mm256_store_ps(keys + (size_t)t * D + c,
                        t < nk ? load8_avx2(kbase, kv->f16, kv->at + (size_t)t * D + c)
                               : _mm256_setzero_ps());
    for (int i = 0; i < n; i++) {
      const int seen = p0 + i + 1 - b0, upto = seen < nk ? seen : nk;
      float *pr = p + (size_t)i * group * KEY_BLOCK;
      for (int t0 = 0; t0 < upto; t0 += 16)
        scores16_avx2(keys + (size_t)t0 * D, q + i * q_stride, group, scale, pr + t0, KEY_BLOCK,
                      D);
      for (int h = 0; h < group; h++)
        softmax_f32(pr + (size_t)h * KEY_BLOCK, upto, nk, peak + i * group + h,
                    sum + i * group + h, keep + i * group + h);
    }
    /* O = O * keep + P V, six rows a pass: each value load serves all of them. */
    const void *run[1] = {(const char *)vbase + kv->at * elem};
    const int count[1] = {nk};
    for (int r = 0; r < rows; r += 6) {
      const int k = rows - r < 6 ? rows - r : 6;
      const float *w = p + (size_t)r * KEY_BLOCK;
      float *y = pv + (size_t)r * D;
      switch (k) {
      case 1: values_avx2(run, count, 1, kv->f16, w, KEY_BLOCK, y, D, 1, D); break;
      case 2: values_avx2(run, count, 1, kv->f16, w, KEY_BLOCK, y, D, 2, D); break;
      case 3: values_avx2(run, count, 1, kv->f16, w, KEY_BLOCK, y, D, 3, D); break;
      case 4: values_avx2(run, count, 1, kv->f16, w, KEY_BLOCK, y, D, 4, D); break;
      case 5: values_avx2(run, count, 1, kv->f16, w, KEY_BLOCK, y, D, 5, D); break;
      default: values_avx2(run, count, 1, kv->f16, w, KEY_BLOCK, y, D, 6, D); break;
      }
    }
    for (int r = 0; r < rows; r++) {
      const __m256 kr = _mm256_set1_ps(keep[r]);
      for (int c = 0; c < D; c += 8) {
        float *oc = o + (size_t)r * D + c;
        _mm256_storeu_ps(oc, _mm256_fmadd_ps(_mm256_loadu_ps(oc), kr,
                                             _mm256_loadu_ps(pv + (size_t)r * D + c)));
      }
    }
  }
  for (int i = 0; i < n; i++)
    for (int h = 0; h < group; h++) {
      const int r = i * group + h;
      const __m256 inv = _mm256_set1_ps(1.0f / sum[r]);
      for (int c = 0; c < D; c += 8)
        _mm256_storeu_ps(out + i * out_stride + (size_t)h * D + c,
                         _mm256_mul_ps(_mm256_loadu_ps(o + (size_t)r * D + c), inv));
    }
}

/* The common head widths as constants, as PREFILL_TILE does. */
static __attribute__((noinline)) void prefill_tile_fma(const KeyBlocks *kv, int D, int group,
                                                       int n, int p0, const float *q,
                                                       size_t q_stride, float *out,
                                                       size_t out_stride, void *scratch) {
  if (D == 128)
    prefill_tile_avx2_impl(kv, 128, group, n, p0, q, q_stride, out, out_stride, scratch);
  else if (D == 64)
    prefill_tile_avx2_impl(kv, 64, group, n, p0, q, q_stride, out, out_stride, scratch);
  else
    prefill_tile_avx2_impl(kv, D, group, n, p0, q, q_stride, out, out_stride, scratch);
}
