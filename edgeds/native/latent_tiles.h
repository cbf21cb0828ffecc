/* Absorbed decode attention over the latent cache on AMX-BF16 tiles (em_set_decode_tiles), the
 * float32 FMA kernel's (attend_chunk) counterpart: per 64 cached rows of a chunk S^T = K Q^T,
 * the rows converted to bf16 as A tiles against a group of 16 heads' queries as B tiles (packed
 * once a layer, latent_query_tiles); the chunk's softmax with the heads in the lanes; then P V,
 * the weights as A tiles and the chunk's rows, interleaved in pairs as vdpbf16ps takes them, as
 * B tiles. bf16 products, float32 sums. An element of a tile product depends on its own row and
 * column only, and rows past the chunk's are zeros, so a (head, row) result is the same in any
 * task, call or batch; it is not the FMA kernel's: a process takes one of the two.
 * Included by mla_moe.c after latent16, latent_row and exp_weights. */
#if defined(__AMX_BF16__) || defined(EDGEDS_EMULATE_TILES)
#define LATENT_TILES 1
#ifdef EDGEDS_EMULATE_TILES
#include "tile_emulation.h"
static void tiles_on(void) {}
#endif

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

/* Bytes of one thread's scratch for attend_chunk_tiles over `groups` groups of 16 heads. */
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

/* Rows [b0, b0 + TILE_PASS) of a chunk (kv: its row 0; `len` rows hold keys, the rest are taken
 * as zeros) into kb, bf16 rows of tile_width(D), and into vt, the latent columns of row pairs
 * (pair P: rows 2P and 2P + 1 of each column, a B tile row of P V). */
static inline __attribute__((always_inline)) void tile_rows(const void *kv, int b0, int len,
                                                            int D, int L, const int half,
                                                            uint16_t *kb, uint16_t *vt) {
  const int Dp = tile_width(D);
  const __m512i order = _mm512_loadu_si512(PAIR_ORDER);
  const __m512 z = _mm512_setzero_ps();
  for (int j = 0; j < TILE_PASS; j += 2) {
    const int ta = b0 + j, tb = ta + 1;
    const void *ra = latent_row(kv, ta, D, half), *rb = latent_row(kv, tb, D, half);
    uint16_t *pair = vt + (size_t)(ta / 2) * L * 2;
    for (int c = 0; c < Dp; c += 32) {
      const __m512 a0 = ta < len && c < D ? latent16(ra, c, half) : z,
                   a1 = ta < len && c + 16 < D ? latent16(ra, c + 16, half) : z,
                   b0v = tb < len && c < D ? latent16(rb, c, half) : z,
                   b1v = tb < len && c + 16 < D ? latent16(rb, c + 16, half) : z;
      _mm512_store_si512(kb + (size_t)j * Dp + c, to_bf16(a0, a1, 1));
      _mm512_store_si512(kb + (size_t)(j + 1) * Dp + c, to_bf16(b0v, b1v, 1));
      if (c < L) _mm512_store_si512(pair + 2 * c, _mm512_permutexvar_epi16(order, to_bf16(a0, b0v, 1)));
      if (c + 16 < L)
        _mm512_store_si512(pair + 2 * (c + 16),
                           _mm512_permutexvar_epi16(order, to_bf16(a1, b1v, 1)));
    }
  }
}

/* attend_chunk's work on tiles: heads h_lo..h_hi (whole groups of 16, or all H) of one query
 * row (qt: its latent_query_tiles) over one chunk of a slot's cached rows; per head the chunk's
 * peak, exp-sum and exp-weighted latents in part [heads][2 + L]. */
static __attribute__((noinline)) void attend_chunk_tiles(const uint32_t *qt, const void *kv,
                                                         int half, int chunk, int length, int h_lo,
                                                         int h_hi, int D, int L, float scale,
                                                         void *scratch, float *part) {
  const int t0 = chunk * KV_CHUNK, len = length - t0 < KV_CHUNK ? length - t0 : KV_CHUNK;
  const int Dp = tile_width(D), X = Dp / 32, g_lo = h_lo / 16, G = (h_hi - 16 * g_lo + 15) / 16;
  const int steps = (len + 31) / 32; /* P V's 32-row steps: rows past len weigh zeros */
  char *s = (char *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
  uint16_t *kb = (uint16_t *)s;
  uint16_t *vt = (uint16_t *)(s += round64((size_t)TILE_PASS * Dp * 2));
  float *sT = (float *)(s += round64((size_t)KV_CHUNK * L * 2)); /* [group][row][head] */
  uint16_t *pb = (uint16_t *)(s += round64((size_t)G * KV_CHUNK * 16 * 4)); /* [head][row] */
  float *tmp = (float *)(s + round64(16 * KV_CHUNK * 2));
  kv = latent_row(kv, t0, D, half);
  tiles_on();
  for (int b0 = 0; b0 < len; b0 += TILE_PASS) {
    if (half)
      tile_rows(kv, b0, len, D, L, 1, kb, vt);
    else
      tile_rows(kv, b0, len, D, L, 0, kb, vt);
    for (int g = 0; g < G; g++) {
      const uint32_t *qg = qt + (size_t)(g_lo + g) * X * 256;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
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
      float *out = sT + ((size_t)g * KV_CHUNK + b0) * 16;
      _tile_stored(0, out, 64);
      _tile_stored(1, out + 256, 64);
      _tile_stored(2, out + 512, 64);
      _tile_stored(3, out + 768, 64);
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
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
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
    }
  }
  _tile_release();
}
#endif
