/* An own int8 GEMM on AMX tiles (and on AVX-512 VNNI), on the 1.5B shape's matmuls: what a kernel
 * of edgeds' own would buy beside ONNX Runtime's MLAS (`ort_int8_gemm_peak.py`), before anyone
 * builds a runtime around one (issue 7: the offline targets are held by the GEMM and attention).
 *
 *   gcc -O3 -march=native -fopenmp benchmarks/amx_gemm.c -o /tmp/amx_gemm && /tmp/amx_gemm [vnni|amx]
 *
 * It computes what the int8 export's MatMulIntegerToFloat + row rescale compute: A is uint8 [M, K]
 * (each row quantized with its own scale, zero point 128), W int8 [K, N] with per-channel scales;
 * y = (A - 128) W * row_scale * channel_scale, float. W is packed once, as a runtime would at load:
 * sixteen columns by four K values in each 64-byte row, the operand layout of both vpdpbusd
 * (one zmm) and AMX's tdpbusd (one tile row), so one packing serves both kernels. The zero point
 * is taken out after the integer sum (128 x the column sums of W), as MLAS does.
 *
 * Every shape's result is checked against a plain integer reference on sampled rows first. */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
  int K, N;
  int8_t *packed;  /* [N/16][K/4][16][4] */
  int32_t *zero_fix; /* 128 * sum_k W[k][n]: what the zero point adds to each column */
  float *scale;    /* per channel */
} Weights;

static Weights pack(const int8_t *w, const float *scale, int K, int N) {
  Weights p = {K, N, aligned_alloc(64, (size_t)K * N), aligned_alloc(64, N * 4), aligned_alloc(64, N * 4)};
  for (int nb = 0; nb < N / 16; nb++)
    for (int k4 = 0; k4 < K / 4; k4++)
      for (int n = 0; n < 16; n++)
        for (int i = 0; i < 4; i++)
          p.packed[((size_t)nb * (K / 4) + k4) * 64 + n * 4 + i] = w[(size_t)(k4 * 4 + i) * N + nb * 16 + n];
  for (int n = 0; n < N; n++) {
    int32_t s = 0;
    for (int k = 0; k < K; k++) s += w[(size_t)k * N + n];
    p.zero_fix[n] = 128 * s;
    p.scale[n] = scale[n];
  }
  return p;
}

/* acc: rows x 16 int32 at stride `ld`, to y's rows x 16 floats starting at column n. */
static inline void finish(const int32_t *acc, int ld, int rows, const Weights *w, int n, const float *row_scale,
                          float *y, int m) {
  __m512i fix = _mm512_loadu_si512(w->zero_fix + n);
  __m512 cs = _mm512_loadu_ps(w->scale + n);
  for (int r = 0; r < rows; r++) {
    __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_loadu_si512(acc + (size_t)r * ld), fix));
    _mm512_storeu_ps(y + (size_t)(m + r) * w->N + n, _mm512_mul_ps(v, _mm512_mul_ps(cs, _mm512_set1_ps(row_scale[m + r]))));
  }
}

/* AVX-512 VNNI: 4 rows x 64 columns a block, 16 zmm accumulators. M % 4 == 0, N % 64 == 0. */
static void gemm_vnni(const uint8_t *a, int M, const Weights *w, const float *row_scale, float *y) {
  const int K = w->K;
#pragma omp parallel for collapse(2) schedule(static)
  for (int nb = 0; nb < w->N / 64; nb++)
    for (int m = 0; m < M; m += 4) {
      __m512i acc[4][4];
      for (int r = 0; r < 4; r++)
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_si512();
      const int8_t *b = w->packed + (size_t)(4 * nb) * (K / 4) * 64;
      for (int k4 = 0; k4 < K / 4; k4++) {
        __m512i bj[4];
        for (int j = 0; j < 4; j++) bj[j] = _mm512_load_si512(b + ((size_t)j * (K / 4) + k4) * 64);
        for (int r = 0; r < 4; r++) {
          __m512i ar = _mm512_set1_epi32(*(const int32_t *)(a + (size_t)(m + r) * K + 4 * k4));
          for (int j = 0; j < 4; j++) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], ar, bj[j]);
        }
      }
      int32_t out[4][64] __attribute__((aligned(64)));
      for (int r = 0; r < 4; r++)
        for (int j = 0; j < 4; j++) _mm512_store_si512(out[r] + 16 * j, acc[r][j]);
      for (int j = 0; j < 4; j++) finish(out[0] + 16 * j, 64, 4, w, 64 * nb + 16 * j, row_scale, y, m);
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

/* AMX: 32 rows x 32 columns a block in four accumulator tiles (0-3), two A tiles (4, 5) and two
 * B tiles (6, 7) per 64 K; a thread walks the rows for its column pairs, so the columns' weights
 * stay in its L2 while A streams. M % 32 == 0, N % 32 == 0, K % 64 == 0. */
static void gemm_amx(const uint8_t *a, int M, const Weights *w, const float *row_scale, float *y) {
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
        finish(acc, 32, 32, w, 32 * nb, row_scale, y, m);
        finish(acc + 16, 32, 32, w, 32 * nb + 16, row_scale, y, m);
      }
    }
    _tile_release();
  }
}
#endif

typedef void (*Gemm)(const uint8_t *, int, const Weights *, const float *, float *);

static int check(Gemm gemm, int M, int K, int N) {
  int8_t *w = malloc((size_t)K * N);
  uint8_t *a = aligned_alloc(64, (size_t)M * K);
  float *scale = malloc(N * 4), *rs = malloc(M * 4), *y = aligned_alloc(64, (size_t)M * N * 4);
  srand(1);
  for (size_t i = 0; i < (size_t)K * N; i++) w[i] = (int8_t)(rand() % 255 - 127);
  for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (uint8_t)(rand() % 256);
  for (int n = 0; n < N; n++) scale[n] = 0.001f * (1 + n % 7);
  for (int m = 0; m < M; m++) rs[m] = 0.01f * (1 + m % 5);
  Weights p = pack(w, scale, K, N);
  gemm(a, M, &p, rs, y);
  double worst = 0;
  for (int m = 0; m < M; m += (M > 8 ? M / 8 : 1) + 1)
    for (int n = 0; n < N; n += 37) {
      int64_t s = 0;
      for (int k = 0; k < K; k++) s += (int64_t)((int)a[(size_t)m * K + k] - 128) * w[(size_t)k * N + n];
      double ref = (double)s * rs[m] * scale[n], err = fabs(y[(size_t)m * N + n] - ref) / (fabs(ref) + 1e-3);
      if (err > worst) worst = err;
    }
  free(w); free(a); free(scale); free(rs); free(y); free(p.packed); free(p.zero_fix); free(p.scale);
  return worst < 1e-5;
}

static void measure(const char *name, Gemm gemm, int M, int K, int N) {
  Weights p;
  int8_t *w = malloc((size_t)K * N);
  float *scale = malloc(N * 4), *rs = malloc(M * 4);
  uint8_t *a = aligned_alloc(64, (size_t)M * K);
  float *y = aligned_alloc(64, (size_t)M * N * 4);
  for (size_t i = 0; i < (size_t)K * N; i++) w[i] = (int8_t)(i * 2654435761u >> 24);
  for (size_t i = 0; i < (size_t)M * K; i++) a[i] = (uint8_t)(i * 40503u >> 8);
  for (int n = 0; n < N; n++) scale[n] = 1e-3f;
  for (int m = 0; m < M; m++) rs[m] = 1e-2f;
  p = pack(w, scale, K, N);
  for (int i = 0; i < 3; i++) gemm(a, M, &p, rs, y);
  int reps = (int)(2e11 / (2.0 * M * K * N)) + 3;
  double t = omp_get_wtime();
  for (int i = 0; i < reps; i++) gemm(a, M, &p, rs, y);
  t = (omp_get_wtime() - t) / reps;
  printf("%-5s threads %2d  M=%4d K=%4d N=%4d: %8.3f ms  %6.2f TOPS\n", name, omp_get_max_threads(), M, K, N, t * 1e3,
         2.0 * M * K * N / t / 1e12);
  free(w); free(scale); free(rs); free(a); free(y); free(p.packed); free(p.zero_fix); free(p.scale);
}

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : "";
  static const int shapes[][2] = {{1536, 2048}, {1536, 8960}, {8960, 1536}}; /* qkv, gate/up, down */
  static const int rows[] = {64, 512, 2048};
  struct { const char *name; Gemm gemm; } kernels[2] = {{"vnni", gemm_vnni}, {0, 0}};
#ifdef __AMX_INT8__
  if (amx_permitted()) kernels[1].name = "amx", kernels[1].gemm = gemm_amx;
  else puts("AMX: this CPU or kernel does not grant the tile registers");
#endif
  for (int i = 0; i < 2; i++) {
    if (!kernels[i].name || (*only && strcmp(only, kernels[i].name))) continue;
    if (!check(kernels[i].gemm, 64, 512, 128) || !check(kernels[i].gemm, 96, 1536, 2048)) {
      printf("%s: results differ from the reference\n", kernels[i].name);
      return 1;
    }
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
      for (size_t r = 0; r < sizeof rows / sizeof *rows; r++)
        measure(kernels[i].name, kernels[i].gemm, rows[r], shapes[s][0], shapes[s][1]);
  }
  return 0;
}
