/* Absorbed decode attention over the latent cache in bf16 products (em_set_decode_kernel), the
 * float32 FMA kernel's (attend_chunk) counterpart, on AMX-BF16 tiles or on vdpbf16ps (AVX-512
 * BF16) over the same layouts: per 64 cached rows of a chunk S^T = K Q^T, the rows converted to
 * bf16 (A) against a group of 16 heads' queries (B, packed once a layer, latent_query_tiles);
 * the chunk's softmax with the heads in the lanes; then P V, the weights (A) against the chunk's
 * rows interleaved in pairs (B). bf16 products, float32 sums. An element of a product depends on
 * its own row and column only, and rows past the chunk's are zeros, so a (head, row) result is
 * the same in any task, call or batch; it is not the FMA kernel's, nor the tiles' that of
 * vdpbf16ps (each sums in its own order): a process takes one of the three.
 * Included by mla_moe.c after latent16, latent_row and exp_weights. */
#ifdef __AVX512F__
#define LATENT_BF16 1
#if defined(__AMX_BF16__) || defined(EDGEDS_EMULATE_TILES)
#define LATENT_TILES 1
#endif
#ifdef EDGEDS_EMULATE_TILES
#include "tile_emulation.h"
static void tiles_on(void) {}
#endif

enum { DECODE_FMA, DECODE_BF16, DECODE_TILES }; /* em_set_decode_kernel's kernels */
typedef int32_t __attribute__((may_alias)) bf16_pair;

/* c[m] (m < rows_out, float32, c_stride apart) = sum over k steps s and pairs p of
 * a[m][s][p] . b[s][p] as vdpbf16ps, lanes the 16 columns: a's row m at a + m * a_stride (bf16,
 * 32 a step), b's pair row p of step s at b + s * b_step + p * b_row (16 pairs). A tile product
 * of AMX done in vector registers, the 16 rows' sums held across the steps. */
static inline __attribute__((always_inline)) void vdp_rows(const uint16_t *a, size_t a_stride,
                                                           const uint32_t *b, size_t b_step,
                                                           size_t b_row, int steps, float *c,
                                                           size_t c_stride, int rows_out) {
  __m512 acc[16];
  for (int m = 0; m < 16; m++) acc[m] = _mm512_setzero_ps();
  for (int s = 0; s < steps; s++)
    for (int p = 0; p < 16; p++) {
      const __m512i bp = _mm512_load_si512(b + s * b_step + p * b_row);
      for (int m = 0; m < 16; m++)
        acc[m] = dp(acc[m], _mm512_set1_epi32(*(const bf16_pair *)(a + m * a_stride + 32 * s + 2 * p)),
                    bp, 1);
    }
  for (int m = 0; m < rows_out; m++) _mm512_storeu_ps(c + m * c_stride, acc[m]);
}

enum { TILE_PASS = 64, MAX_TILE_D = 1024 }; /* rows scored a pass (four C tiles); D's bound */

static inline int tile_width(int D) { return (D + 31) / 32 * 32; }

/* The widths the tiles take: latent and rope in whole 16-column blocks. */
static inline int latent_tiles_fit(int L, int rope) {
  return L % 16 == 0 && rope % 16 == 0 && L + rope <= MAX_TILE_D;
}

/* Bytes of one row's query tiles (latent_query_tiles). */
static inline size_t latent_query_bytes(int H, int D) {
  return (size_t)(H + 15) / 16 * (tile_width(D) / 32) * 1024;
}

/* Bytes of one thread's scratch for attend_chunk_bf16 over `groups` groups of 16 heads. */
static inline size_t latent_tile_scratch(int groups, int D, int L) {
  return 64 + round64((size_t)TILE_PASS * tile_width(D) * 2) + round64((size_t)KV_CHUNK * L * 2) +
         round64((size_t)groups * KV_CHUNK * 16 * 4) + round64(16 * KV_CHUNK * 2) + 16 * 16 * 4;
}

/* One row's queries q [H][D] (latent query, then rope) as B tiles: for each group of 16 heads,
 * tile_width(D) / 32 tiles whose row p holds, per head, columns 32x + 2p and 32x + 2p + 1 (a
 * vdpbf16ps pair); heads past H and columns past D are zeros. */
static void latent_query_tiles(const float *q, int H, int D, uint32_t *qt) {
  const int Dp = tile_width(D), X = Dp / 32;
  uint32_t pairs[MAX_TILE_D / 2] __attribute__((aligned(64)));
  memset(qt, 0, latent_query_bytes(H, D));
  for (int h = 0; h < H; h++) {
    const float *row = q + (size_t)h * D;
    for (int c = 0; c < Dp; c += 32)
      _mm512_store_si512(pairs + c / 2,
                         to_bf16(c < D ? _mm512_loadu_ps(row + c) : _mm512_setzero_ps(),
                                 c + 16 < D ? _mm512_loadu_ps(row + c + 16) : _mm512_setzero_ps(),
                                 1));
    uint32_t *group = qt + (size_t)(h / 16) * X * 256;
    for (int j = 0; j < Dp / 2; j++) group[(j / 16) * 256 + (j % 16) * 16 + h % 16] = pairs[j];
  }
}

#ifdef LATENT_TILES
static inline void zero_accumulators(void) { /* C tiles 0-3 */
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
}
#endif

/* Two consecutive cached rows (ra, rb; NULL: past the chunk's keys, zeros) into ka and kb (bf16,
 * tile_width(D) columns each) and into `pair`, a pair row of vt (the latent columns of both,
 * interleaved: a B row of P V). */
static inline __attribute__((always_inline)) void tile_pair(const void *ra, const void *rb, int D,
                                                            int L, const int half, uint16_t *ka,
                                                            uint16_t *kb, uint16_t *pair) {
  const __m512i order = _mm512_loadu_si512(PAIR_ORDER);
  const __m512 z = _mm512_setzero_ps();
  for (int c = 0; c < tile_width(D); c += 32) {
    const __m512 a0 = ra && c < D ? latent16(ra, c, half) : z,
                 a1 = ra && c + 16 < D ? latent16(ra, c + 16, half) : z,
                 b0 = rb && c < D ? latent16(rb, c, half) : z,
                 b1 = rb && c + 16 < D ? latent16(rb, c + 16, half) : z;
    _mm512_store_si512(ka + c, to_bf16(a0, a1, 1));
    _mm512_store_si512(kb + c, to_bf16(b0, b1, 1));
    if (c < L) _mm512_store_si512(pair + 2 * c, _mm512_permutexvar_epi16(order, to_bf16(a0, b0, 1)));
    if (c + 16 < L)
      _mm512_store_si512(pair + 2 * (c + 16), _mm512_permutexvar_epi16(order, to_bf16(a1, b1, 1)));
  }
}

/* Rows [b0, b0 + TILE_PASS) of a chunk (kv: its row 0; `len` rows hold keys, the rest are taken
 * as zeros) into kb (bf16 rows) and vt (row pairs), tile_pair's. */
static inline __attribute__((always_inline)) void tile_rows(const void *kv, int b0, int len,
                                                            int D, int L, const int half,
                                                            uint16_t *kb, uint16_t *vt) {
  const int Dp = tile_width(D);
  for (int j = 0; j < TILE_PASS; j += 2) {
    const int ta = b0 + j, tb = ta + 1;
    uint16_t *ka = kb + (size_t)j * Dp, *pair = vt + (size_t)(ta / 2) * L * 2;
    tile_pair(ta < len ? latent_row(kv, ta, D, half) : NULL,
              tb < len ? latent_row(kv, tb, D, half) : NULL, D, L, half, ka, ka + Dp, pair);
  }
}

/* attend_chunk's work in bf16 products (amx: on tiles, else on vdpbf16ps): heads h_lo..h_hi
 * (whole groups of 16, or all H) of one query row (qt: its latent_query_tiles) over one chunk of
 * a slot's cached rows; per head the chunk's peak, exp-sum and exp-weighted latents in part
 * [heads][2 + L]. */
static inline __attribute__((always_inline)) void attend_chunk_bf16_t(
    const uint32_t *qt, const void *kv, int half, int chunk, int length, int h_lo, int h_hi, int D,
    int L, float scale, void *scratch, float *part, const int amx) {
  const int t0 = chunk * KV_CHUNK, len = length - t0 < KV_CHUNK ? length - t0 : KV_CHUNK;
  const int Dp = tile_width(D), X = Dp / 32, g_lo = h_lo / 16, G = (h_hi - 16 * g_lo + 15) / 16;
  const int steps = (len + 31) / 32; /* P V's 32-row steps: rows past len weigh zeros */
  char *s = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  uint16_t *kb = (uint16_t *)s;
  uint16_t *vt = (uint16_t *)(s += round64((size_t)TILE_PASS * Dp * 2));
  float *sT = (float *)(s += round64((size_t)KV_CHUNK * L * 2)); /* [group][row][head] */
  uint16_t *pb = (uint16_t *)(s += round64((size_t)G * KV_CHUNK * 16 * 4)); /* [head][row] */
  float *tmp = (float *)(s + round64(16 * KV_CHUNK * 2)); /* a C tile's rows, for part */
  (void)tmp;
  kv = latent_row(kv, t0, D, half);
#ifdef LATENT_TILES
  if (amx) tiles_on();
#endif
  for (int b0 = 0; b0 < len; b0 += TILE_PASS) {
    if (half)
      tile_rows(kv, b0, len, D, L, 1, kb, vt);
    else
      tile_rows(kv, b0, len, D, L, 0, kb, vt);
    for (int g = 0; g < G; g++) {
      const uint32_t *qg = qt + (size_t)(g_lo + g) * X * 256;
      float *out = sT + ((size_t)g * KV_CHUNK + b0) * 16;
      if (!amx) {
        for (int i = 0; i < TILE_PASS / 16; i++)
          vdp_rows(kb + (size_t)16 * i * Dp, Dp, qg, 256, 16, X, out + 256 * i, 16, 16);
        continue;
      }
#ifdef LATENT_TILES
      zero_accumulators();
      for (int x = 0; x < X; x++) {
        _tile_loadd(4, qg + (size_t)x * 256, 64);
        _tile_loadd(5, kb + 32 * x, Dp * 2);
        _tile_loadd(6, kb + (size_t)16 * Dp + 32 * x, Dp * 2);
        _tile_dpbf16ps(0, 5, 4);
        _tile_dpbf16ps(1, 6, 4);
        _tile_loadd(5, kb + (size_t)32 * Dp + 32 * x, Dp * 2);
        _tile_loadd(6, kb + (size_t)48 * Dp + 32 * x, Dp * 2);
        _tile_dpbf16ps(2, 5, 4);
        _tile_dpbf16ps(3, 6, 4);
      }
      _tile_stored(0, out, 64);
      _tile_stored(1, out + 256, 64);
      _tile_stored(2, out + 512, 64);
      _tile_stored(3, out + 768, 64);
#endif
    }
  }
  const __m512i lanes = _mm512_mullo_epi32(
      _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(16));
  for (int g = 0; g < G; g++) {
    const int h0 = 16 * (g_lo + g), heads = h_hi - h0 < 16 ? h_hi - h0 : 16;
    float *S = sT + (size_t)g * KV_CHUNK * 16;
    __m512 top = _mm512_set1_ps(-FLT_MAX), sum = _mm512_setzero_ps();
    for (int t = 0; t < len; t++) {
      const __m512 v = _mm512_mul_ps(_mm512_load_ps(S + 16 * t), _mm512_set1_ps(scale));
      _mm512_store_ps(S + 16 * t, v);
      top = _mm512_max_ps(top, v);
    }
    for (int t = 0; t < len; t++) {
      const __m512 e = exp_weights(_mm512_sub_ps(_mm512_load_ps(S + 16 * t), top));
      _mm512_store_ps(S + 16 * t, e);
      sum = _mm512_add_ps(sum, e);
    }
    float peak[16], total[16];
    _mm512_storeu_ps(peak, top);
    _mm512_storeu_ps(total, sum);
    for (int n = 0; n < heads; n++)
      part[(size_t)(h0 + n) * (L + 2)] = peak[n], part[(size_t)(h0 + n) * (L + 2) + 1] = total[n];
    for (int n = 0; n < 16; n++) /* the weights by head: A tiles of P V */
      for (int t = 0; t < 32 * steps; t += 32) {
        const __m512 lo = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), seen_mask(len, t), lanes,
                                                   S + (size_t)t * 16 + n, 4),
                     hi = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), seen_mask(len, t + 16),
                                                   lanes, S + (size_t)(t + 16) * 16 + n, 4);
        _mm512_store_si512(pb + (size_t)n * KV_CHUNK + t, to_bf16(lo, hi, 1));
      }
    for (int c0 = 0; c0 < L; c0 += 64) {
      const int blocks = L - c0 < 64 ? (L - c0) / 16 : 4;
      if (!amx) {
        for (int i = 0; i < blocks; i++)
          vdp_rows(pb, KV_CHUNK, (const uint32_t *)vt + c0 + 16 * i, (size_t)16 * L, L, steps,
                   part + (size_t)h0 * (L + 2) + 2 + c0 + 16 * i, L + 2, heads);
        continue;
      }
#ifdef LATENT_TILES
      zero_accumulators();
      for (int k = 0; k < steps; k++) {
        const uint16_t *v = vt + ((size_t)16 * k * L + c0) * 2;
        _tile_loadd(4, pb + 32 * k, KV_CHUNK * 2);
        _tile_loadd(5, v, L * 4);
        _tile_dpbf16ps(0, 4, 5);
        if (blocks > 1) {
          _tile_loadd(6, v + 32, L * 4);
          _tile_dpbf16ps(1, 4, 6);
        }
        if (blocks > 2) {
          _tile_loadd(5, v + 64, L * 4);
          _tile_dpbf16ps(2, 4, 5);
        }
        if (blocks > 3) {
          _tile_loadd(6, v + 96, L * 4);
          _tile_dpbf16ps(3, 4, 6);
        }
      }
      for (int i = 0; i < blocks; i++) {
        if (i == 0) _tile_stored(0, tmp, 64);
        if (i == 1) _tile_stored(1, tmp, 64);
        if (i == 2) _tile_stored(2, tmp, 64);
        if (i == 3) _tile_stored(3, tmp, 64);
        for (int n = 0; n < heads; n++)
          memcpy(part + (size_t)(h0 + n) * (L + 2) + 2 + c0 + 16 * i, tmp + 16 * n, 64);
      }
#endif
    }
  }
#ifdef LATENT_TILES
  if (amx) _tile_release();
#endif
}

/* One copy of the arithmetic per cache type and kernel, as attend_chunk. */
static __attribute__((noinline)) void attend_chunk_bf16(const uint32_t *qt, const void *kv,
                                                        int half, int chunk, int length, int h_lo,
                                                        int h_hi, int D, int L, float scale,
                                                        void *scratch, float *part,
                                                        int kernel) {
#ifdef LATENT_TILES
  if (kernel == DECODE_TILES) {
    if (half)
      attend_chunk_bf16_t(qt, kv, 1, chunk, length, h_lo, h_hi, D, L, scale, scratch, part, 1);
    else
      attend_chunk_bf16_t(qt, kv, 0, chunk, length, h_lo, h_hi, D, L, scale, scratch, part, 1);
    return;
  }
#endif
  (void)kernel;
  if (half)
    attend_chunk_bf16_t(qt, kv, 1, chunk, length, h_lo, h_hi, D, L, scale, scratch, part, 0);
  else
    attend_chunk_bf16_t(qt, kv, 0, chunk, length, h_lo, h_hi, D, L, scale, scratch, part, 0);
}
#endif
