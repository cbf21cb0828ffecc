/* An own int8 GEMM on AMX tiles (and on AVX-512 VNNI), on the 1.5B shape's matmuls: what a kernel
 * of edgeds' own would buy beside ONNX Runtime's MLAS (`ort_int8_gemm_peak.py`), before anyone
 * builds a runtime around one (issue 7: the offline targets are held by the GEMM and attention).
 *
 *   gcc -O3 -march=native -fopenmp benchmarks/kernels/amx_gemm.c -o /tmp/amx_gemm
 *   /tmp/amx_gemm [vnni|amx]
 *
 * It computes what the int8 export's MatMulIntegerToFloat + row rescale compute: A is uint8 [M, K]
 * (each row quantized with its own scale, zero point 128), W int8 [K, N] with per-channel scales;
 * y = (A - 128) W * row_scale * channel_scale, float. W is packed once, as a runtime would at load:
 * sixteen columns by four K values in each 64-byte row, the operand layout of both vpdpbusd
 * (one zmm) and AMX's tdpbusd (one tile row), so one packing serves both kernels. The zero point
 * is taken out after the integer sum (128 x the column sums of W), as MLAS does.
 *
 * Every shape's result is checked against a plain integer reference on sampled rows first. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../../edgeds/native/int8_gemm.h"

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
  gemm(a, M, 1, &p, rs, y);
  double worst = 0;
  for (int m = 0; m < M; m += (M > 8 ? M / 8 : 1) + 1)
    for (int n = 0; n < N; n += 37) {
      int64_t s = 0;
      for (int k = 0; k < K; k++)
        s += (int64_t)((int)a[(size_t)m * K + k] - 128) * w[(size_t)k * N + n];
      double ref = (double)s * rs[m] * scale[n];
      double err = fabs(y[(size_t)m * N + n] - ref) / (fabs(ref) + 1e-3);
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
  for (int i = 0; i < 3; i++) gemm(a, M, 1, &p, rs, y);
  int reps = (int)(2e11 / (2.0 * M * K * N)) + 3;
  double t = omp_get_wtime();
  for (int i = 0; i < reps; i++) gemm(a, M, 1, &p, rs, y);
  t = (omp_get_wtime() - t) / reps;
  printf("%-5s threads %2d  M=%4d K=%4d N=%4d: %8.3f ms  %6.2f TOPS\n", name, omp_get_max_threads(),
         M, K, N, t * 1e3, 2.0 * M * K * N / t / 1e12);
  free(w); free(scale); free(rs); free(a); free(y); free(p.packed); free(p.zero_fix); free(p.scale);
}

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : "";
  /* qkv, gate/up, down */
  static const int shapes[][2] = {{1536, 2048}, {1536, 8960}, {8960, 1536}};
  static const int rows[] = {64, 512, 2048};
  struct { const char *name; Gemm gemm; } kernels[2] = {{"vnni", gemm_vnni}, {0, 0}};
#ifdef __AMX_INT8__
  if (amx_permitted()) kernels[1].name = "amx", kernels[1].gemm = gemm_amx;
  else puts("AMX: this CPU or kernel does not grant the tile registers");
#endif
  for (int i = 0; i < 2; i++) {
    if (!kernels[i].name || (*only && strcmp(only, kernels[i].name))) continue;
    /* VNNI also takes row counts that are not a multiple of its 4-row block (one sequence). */
    int odd_rows = kernels[i].gemm != gemm_vnni ||
                   (check(gemm_vnni, 1, 512, 128) && check(gemm_vnni, 7, 1536, 256));
    if (!odd_rows || !check(kernels[i].gemm, 64, 512, 128) ||
        !check(kernels[i].gemm, 96, 1536, 2048)) {
      printf("%s: results differ from the reference\n", kernels[i].name);
      return 1;
    }
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
      for (size_t r = 0; r < sizeof rows / sizeof *rows; r++)
        measure(kernels[i].name, kernels[i].gemm, rows[r], shapes[s][0], shapes[s][1]);
  }
  return 0;
}
