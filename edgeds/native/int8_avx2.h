/* The int8 dot products of the GEMM kernels (int8_gemm.h, mla_moe.c) for the AVX2 build, which
 * has no vpdpbusd. vpmaddubsw multiplies unsigned by signed bytes but adds each pair in 16 bits
 * with saturation, so it is exact only where no pair passes 32,767: here the activations enter
 * signed (a - 128: within +-127, as every quantized row of these decoders is) and each pair is
 * |w| x (a - 128 with w's sign), at most 2 x 128 x 127. Four instructions per 32 bytes of a row
 * (vpsignb, vpmaddubsw, vpmaddwd by ones, vpaddd) against the AVX-512 kernels' pair of halves,
 * which spilled their 16 accumulators of two registers each to memory.
 *
 * The sums leave with the zero point already out (sum of (a - 128) w), so in this build zero_fix
 * is zero (int8_gemm.h); the integer sums are exact, so the results are the AVX-512 build's. */
#pragma once
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

/* R rows of A (pointers ap, K bytes each) against B sixteen-column blocks at b, stride bytes
 * apart (int8_gemm.h's packing: a block's K / 4 rows of 16 columns x 4 bytes), R x B <= 4:
 * int32 sums into out[r][16 * (j0 + j)]. */
static inline __attribute__((always_inline)) void
dot_blocks_avx2(const uint8_t *const *ap, int K, const int8_t *b, size_t stride, int j0,
                const int R, const int B, int32_t out[4][64]) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[4][4][2];
  for (int r = 0; r < R; r++)
    for (int j = 0; j < B; j++) acc[r][j][0] = acc[r][j][1] = _mm256_setzero_si256();
  for (int k4 = 0; k4 < K / 4; k4++) {
    __m256i w[4][2], mag[4][2];
    for (int j = 0; j < B; j++)
      for (int h = 0; h < 2; h++) {
        w[j][h] = _mm256_load_si256((const __m256i *)(b + j * stride + (size_t)k4 * 64 + 32 * h));
        mag[j][h] = _mm256_abs_epi8(w[j][h]);
      }
    for (int r = 0; r < R; r++) {
      const __m256i a = _mm256_xor_si256(
          _mm256_set1_epi32(*(const int32_t *)(ap[r] + 4 * k4)), _mm256_set1_epi8((char)0x80));
      for (int j = 0; j < B; j++)
        for (int h = 0; h < 2; h++) {
          const __m256i pairs = _mm256_maddubs_epi16(mag[j][h], _mm256_sign_epi8(a, w[j][h]));
          acc[r][j][h] = _mm256_add_epi32(acc[r][j][h], _mm256_madd_epi16(pairs, ones));
        }
    }
  }
  for (int r = 0; r < R; r++)
    for (int j = 0; j < B; j++)
      for (int h = 0; h < 2; h++)
        _mm256_store_si256((__m256i *)(out[r] + 16 * (j0 + j) + 8 * h), acc[r][j][h]);
}

/* rows (1-4) x nblk (1-4) blocks, as mla_moe.c's micro() and int8_gemm.h's vnni_block(): at
 * most eight accumulators and four weight registers live (more spilled to the stack): one row
 * takes two blocks at a time, more rows one block, its weights loaded once for all of them. */
static inline void dot_any_avx2(const uint8_t *const *ap, int K, const int8_t *b, size_t stride,
                                int rows, int nblk, int32_t out[4][64]) {
  for (int j = 0; j < nblk;) {
    const int8_t *bj = b + j * stride;
    if (rows == 1 && nblk - j >= 2) {
      dot_blocks_avx2(ap, K, bj, stride, j, 1, 2, out);
      j += 2;
      continue;
    }
    switch (rows) {
    case 1: dot_blocks_avx2(ap, K, bj, stride, j, 1, 1, out); break;
    case 2: dot_blocks_avx2(ap, K, bj, stride, j, 2, 1, out); break;
    case 3: dot_blocks_avx2(ap, K, bj, stride, j, 3, 1, out); break;
    default: dot_blocks_avx2(ap, K, bj, stride, j, 4, 1, out); break;
    }
    j++;
  }
}
