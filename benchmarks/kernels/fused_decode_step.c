/* One decode step of the 1.5B dense shape (Qwen2: 28 layers, hidden 1536, 12 query and 2 KV
 * heads of 128, MLP 8960, vocabulary 151936) written as a handful of OpenMP loops per layer
 * instead of ONNX Runtime's ~36 graph nodes: how fast a decode step could be with kernels of our
 * own (issue 7: on the AMX Xeon a batch-64 step of the int8 export spends 41% in the integer
 * matmuls, 35% in GroupQueryAttention and 24% in the small nodes around them).
 *
 *   gcc -O3 -march=native -ffast-math -fopenmp benchmarks/kernels/fused_decode_step.c \
 *       -o /tmp/fused -lm
 *   /tmp/fused decode BATCH CACHED [STEPS]   a decode step, e.g. /tmp/fused decode 64 256
 *   /tmp/fused prefill TOKENS [STEPS]        one prompt's prefill, e.g. /tmp/fused prefill 512
 *   echo LENGTHS | /tmp/fused job            the harness's 64-prompt offline job, prompt lengths
 *                                            on stdin; the harness's own lengths
 *                                            (benchmarks/peers/runners.py):
 *     python3 -c "import numpy as n; r = n.random.default_rng(0); \
 *       [r.integers(10, 151936, k) for k in (16, 128, 128)]; print(*r.integers(64, 513, 64))"
 *
 * The arithmetic is the int8 export's: every linear layer's input quantized per row to uint8
 * (zero point 128), int8 weights with per-channel scales (`edgeds/native/int8_gemm.h`: AMX tiles
 * where the CPU grants them, else AVX-512 VNNI), RMSNorm, rotary, a float16 KV cache, float32
 * attention and SiLU. Weights are random and already packed: this times a step, it is no model.
 * The phase times it prints come from timers between the loops (the loops are the phases). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../../edgeds/native/int8_gemm.h"

enum {
  L = 28, H = 1536, NH = 12, NKV = 2, D = 128, GROUP = NH / NKV, QKV = (NH + 2 * NKV) * D,
  I = 8960, V = 151936
};

static Gemm gemm = gemm_vnni;

static Weights random_weights(int K, int N, uint32_t seed) {
  Weights w = {K, N, aligned_alloc(64, (size_t)K * N), aligned_alloc(64, N * 4),
               aligned_alloc(64, N * 4)};
#pragma omp parallel for
  for (size_t i = 0; i < (size_t)K * N / 4; i++)
    ((uint32_t *)w.packed)[i] = (uint32_t)(i * 2654435761u + seed) & 0x3f3f3f3f;
  for (int n = 0; n < N; n++) w.zero_fix[n] = 0, w.scale[n] = 1.0f / (64.0f * sqrtf((float)K));
  return w;
}

/* x -> uint8 row (zero point 128) and its scale, after an optional RMSNorm with weights g. */
static void quantize_row(const float *x, int n, const float *g, uint8_t *q, float *scale) {
  float tmp[I];
  const float *src = x;
  if (g) {
    float ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / n + 1e-6f);
    for (int i = 0; i < n; i++) tmp[i] = x[i] * r * g[i];
    src = tmp;
  }
  float peak = 0;
  for (int i = 0; i < n; i++) peak = fmaxf(peak, fabsf(src[i]));
  float s = peak / 127, inv = peak > 0 ? 127 / peak : 0;
  for (int i = 0; i < n; i++) q[i] = (uint8_t)(lrintf(src[i] * inv) + 128);
  *scale = s;
}

static void rotate(float *x, int pos, const float *cos_t, const float *sin_t) {
  for (int i = 0; i < D / 2; i++) {
    float c = cos_t[pos * (D / 2) + i], s = sin_t[pos * (D / 2) + i], a = x[i], b = x[i + D / 2];
    x[i] = a * c - b * s;
    x[i + D / 2] = b * c + a * s;
  }
}

/* The GROUP query heads of one KV head over `len` cached positions: each cached key and value is
 * read (and widened from float16) once for all heads of the group. */
static void attend(const float *q, const _Float16 *k, const _Float16 *v, int len, float *out,
                   float *scores) {
  const float scale = 1.0f / sqrtf((float)D);
  for (int t = 0; t < len; t++) {
    const _Float16 *kt = k + (size_t)t * D;
    __m512 acc[GROUP];
    for (int h = 0; h < GROUP; h++) acc[h] = _mm512_setzero_ps();
    for (int c = 0; c < D; c += 16) {
      __m512 kc = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kt + c)));
      for (int h = 0; h < GROUP; h++)
        acc[h] = _mm512_fmadd_ps(_mm512_loadu_ps(q + h * D + c), kc, acc[h]);
    }
    for (int h = 0; h < GROUP; h++) scores[h * len + t] = _mm512_reduce_add_ps(acc[h]) * scale;
  }
  for (int h = 0; h < GROUP; h++) {
    float *s = scores + h * len, peak = -INFINITY, sum = 0;
    for (int t = 0; t < len; t++) peak = fmaxf(peak, s[t]);
    for (int t = 0; t < len; t++) s[t] = expf(s[t] - peak);
    for (int t = 0; t < len; t++) sum += s[t];
    for (int t = 0; t < len; t++) s[t] /= sum;
  }
  __m512 acc[GROUP][D / 16];
  for (int h = 0; h < GROUP; h++)
    for (int c = 0; c < D / 16; c++) acc[h][c] = _mm512_setzero_ps();
  for (int t = 0; t < len; t++) {
    const _Float16 *vt = v + (size_t)t * D;
    for (int c = 0; c < D / 16; c++) {
      __m512 vc = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vt + 16 * c)));
      for (int h = 0; h < GROUP; h++)
        acc[h][c] = _mm512_fmadd_ps(_mm512_set1_ps(scores[h * len + t]), vc, acc[h][c]);
    }
  }
  for (int h = 0; h < GROUP; h++)
    for (int c = 0; c < D / 16; c++) _mm512_storeu_ps(out + h * D + 16 * c, acc[h][c]);
}

/* Phase timers: each phase is the time since the previous mark. */
static double mark;
static void tick(double *phase) {
  double now = omp_get_wtime();
  *phase += now - mark;
  mark = now;
}

typedef struct { Weights qkv, o, gate, up, down; float *bias, *norm1, *norm2; } Layer;

/* The model, a KV cache of `slots` sequences x `cap` positions, and scratch for `max_rows` rows. */
typedef struct {
  Layer layer[L];
  Weights head;
  float *final_norm, *cos_t, *sin_t;
  int slots, cap, max_rows, row_block;
  _Float16 *kc, *vc;
  float *h, *tmp, *up, *qkv, *attn, *logits, *rs, *scores;
  uint8_t *xq;
  double t_gemm, t_attn, t_other;
} Model;

static Model *build(int slots, int cap, int max_rows) {
  Model *m = calloc(1, sizeof *m);
#ifdef __AMX_INT8__
  if (amx_permitted()) gemm = gemm_amx;
#endif
  m->row_block = gemm == gemm_vnni ? 4 : 32; /* the kernels' row blocks */
  m->slots = slots, m->cap = cap, m->max_rows = max_rows = (max_rows + 31) / 32 * 32;
  for (int l = 0; l < L; l++) {
    Layer *ly = &m->layer[l];
    *ly = (Layer){random_weights(H, QKV, 5 * l), random_weights(H, H, 5 * l + 1),
                  random_weights(H, I, 5 * l + 2), random_weights(H, I, 5 * l + 3),
                  random_weights(I, H, 5 * l + 4), calloc(QKV, 4), malloc(H * 4), malloc(H * 4)};
    for (int i = 0; i < H; i++) ly->norm1[i] = ly->norm2[i] = 1.0f;
  }
  m->head = random_weights(H, V, 999);
  m->final_norm = malloc(H * 4);
  m->cos_t = malloc((size_t)cap * D / 2 * 4), m->sin_t = malloc((size_t)cap * D / 2 * 4);
  for (int i = 0; i < H; i++) m->final_norm[i] = 1.0f;
  for (int p = 0; p < cap; p++)
    for (int i = 0; i < D / 2; i++) {
      double f = p * pow(1e6, -2.0 * i / D);
      m->cos_t[p * D / 2 + i] = (float)cos(f), m->sin_t[p * D / 2 + i] = (float)sin(f);
    }
  size_t cache = (size_t)L * slots * NKV * cap * D;
  m->kc = aligned_alloc(64, cache * 2), m->vc = aligned_alloc(64, cache * 2);
#pragma omp parallel for
  for (size_t i = 0; i < cache; i++)
    m->kc[i] = m->vc[i] = (_Float16)(((i * 40503u) >> 7 & 255) / 256.0f - 0.5f);
  m->h = calloc((size_t)max_rows * H, 4);
  m->tmp = calloc((size_t)max_rows * I, 4), m->up = calloc((size_t)max_rows * I, 4);
  m->qkv = calloc((size_t)max_rows * QKV, 4), m->attn = calloc((size_t)max_rows * H, 4);
  m->logits = calloc((size_t)(slots + 31) / 32 * 32 * V, 4), m->rs = calloc(max_rows, 4);
  m->scores = calloc((size_t)omp_get_max_threads() * GROUP * cap, 4);
  m->xq = aligned_alloc(64, (size_t)max_rows * I);
  memset(m->xq, 128, (size_t)max_rows * I);
  return m;
}

/* One call: `rows` tokens, row r at position pos_of[r] of slot slot_of[r] (attending to the
 * slot's positions up to its own); logits for the last `n_logits` rows. */
static void forward(Model *m, int rows, const int *slot_of, const int *pos_of, int n_logits) {
  const int M = (rows + m->row_block - 1) / m->row_block * m->row_block, cap = m->cap;
  const size_t per_layer = (size_t)m->slots * NKV * cap * D;
  float *h = m->h, *tmp = m->tmp, *up = m->up, *qkv = m->qkv, *attn = m->attn, *rs = m->rs;
  uint8_t *xq = m->xq;
  for (int b = 0; b < rows; b++)
    for (int i = 0; i < H; i++) h[(size_t)b * H + i] = sinf(0.01f * (b + i + pos_of[b]));
  mark = omp_get_wtime();
  for (int l = 0; l < L; l++) {
    Layer *ly = &m->layer[l];
    _Float16 *kl = m->kc + l * per_layer, *vl = m->vc + l * per_layer;
#pragma omp parallel for
    for (int b = 0; b < rows; b++)
      quantize_row(h + (size_t)b * H, H, ly->norm1, xq + (size_t)b * H, rs + b);
    tick(&m->t_other);
    gemm(xq, M, 1, &ly->qkv, rs, qkv);
    tick(&m->t_gemm);
#pragma omp parallel for
    for (int b = 0; b < rows; b++) {
      float *r = qkv + (size_t)b * QKV;
      for (int i = 0; i < QKV; i++) r[i] += ly->bias[i];
      for (int hd = 0; hd < NH + NKV; hd++) rotate(r + hd * D, pos_of[b], m->cos_t, m->sin_t);
      for (int g = 0; g < NKV; g++)
        for (int i = 0; i < D; i++) {
          size_t at = (((size_t)slot_of[b] * NKV + g) * cap + pos_of[b]) * D + i;
          kl[at] = (_Float16)r[(NH + g) * D + i];
          vl[at] = (_Float16)r[(NH + NKV + g) * D + i];
        }
    }
    tick(&m->t_other);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < rows; b++)
      for (int g = 0; g < NKV; g++) {
        size_t at = ((size_t)slot_of[b] * NKV + g) * cap * D;
        attend(qkv + (size_t)b * QKV + g * GROUP * D, kl + at, vl + at, pos_of[b] + 1,
               attn + (size_t)b * H + g * GROUP * D,
               m->scores + (size_t)omp_get_thread_num() * GROUP * cap);
      }
    tick(&m->t_attn);
#pragma omp parallel for
    for (int b = 0; b < rows; b++)
      quantize_row(attn + (size_t)b * H, H, NULL, xq + (size_t)b * H, rs + b);
    tick(&m->t_other);
    gemm(xq, M, 1, &ly->o, rs, tmp);
    tick(&m->t_gemm);
#pragma omp parallel for
    for (int b = 0; b < rows; b++) {
      for (int i = 0; i < H; i++) h[(size_t)b * H + i] += tmp[(size_t)b * H + i];
      quantize_row(h + (size_t)b * H, H, ly->norm2, xq + (size_t)b * H, rs + b);
    }
    tick(&m->t_other);
    gemm(xq, M, 1, &ly->gate, rs, tmp);
    gemm(xq, M, 1, &ly->up, rs, up);
    tick(&m->t_gemm);
#pragma omp parallel for
    for (int b = 0; b < rows; b++) {
      float *g = tmp + (size_t)b * I, *u = up + (size_t)b * I;
      for (int i = 0; i < I; i++) g[i] = g[i] / (1 + expf(-g[i])) * u[i];
      quantize_row(g, I, NULL, xq + (size_t)b * I, rs + b);
    }
    tick(&m->t_other);
    gemm(xq, M, 1, &ly->down, rs, tmp);
    tick(&m->t_gemm);
#pragma omp parallel for
    for (int b = 0; b < rows; b++)
      for (int i = 0; i < H; i++) h[(size_t)b * H + i] += tmp[(size_t)b * H + i];
    tick(&m->t_other);
  }
  const int last = rows - n_logits; /* a prefill's LM head takes its last row only */
#pragma omp parallel for
  for (int b = 0; b < n_logits; b++)
    quantize_row(h + (size_t)(last + b) * H, H, m->final_norm, xq + (size_t)b * H, rs + b);
  tick(&m->t_other);
  gemm(xq, (n_logits + m->row_block - 1) / m->row_block * m->row_block, 1, &m->head, rs, m->logits);
  tick(&m->t_gemm);
}

/* `tokens`: what the calls computed, for the rate. */
static void report(const Model *m, const char *what, int n, int tokens, int calls) {
  double total = m->t_gemm + m->t_attn + m->t_other;
  printf("%s threads %2d %s %4d: %8.2f ms a call (%7.1f tok/s); "
         "matmuls %.2f, attention %.2f, the rest %.2f ms\n",
         gemm == gemm_vnni ? "vnni" : "amx ", omp_get_max_threads(), what, n, total / calls * 1e3,
         tokens / total, m->t_gemm / calls * 1e3, m->t_attn / calls * 1e3,
         m->t_other / calls * 1e3);
}

static void reset(Model *m) { m->t_gemm = m->t_attn = m->t_other = 0; }

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "decode";
  if (!strcmp(mode, "job")) {
    /* The harness's 64-prompt job (benchmarks/peers/runners.py): each prompt prefilled alone,
     * then `new - 1` decode steps of all 64 together, every sequence at its own position. */
    int lengths[64], n = 0, longest = 0, new_tokens = 128;
    while (n < 64 && scanf("%d", &lengths[n]) == 1)
      longest = lengths[n] > longest ? lengths[n] : longest, n++;
    Model *m = build(n, longest + new_tokens, longest > n ? longest : n);
    int *slot = malloc(m->max_rows * sizeof(int)), *pos = malloc(m->max_rows * sizeof(int));
    double t0 = omp_get_wtime();
    for (int s = 0; s < n; s++) {
      for (int r = 0; r < lengths[s]; r++) slot[r] = s, pos[r] = r;
      forward(m, lengths[s], slot, pos, 1);
    }
    double prefill = omp_get_wtime() - t0;
    int prompt_tokens = 0;
    for (int s = 0; s < n; s++) prompt_tokens += lengths[s];
    report(m, "job prefill, prompts", n, prompt_tokens, n);
    reset(m);
    t0 = omp_get_wtime();
    for (int step = 0; step < new_tokens - 1; step++) {
      for (int s = 0; s < n; s++) slot[s] = s, pos[s] = lengths[s] + step;
      forward(m, n, slot, pos, n);
    }
    double decode = omp_get_wtime() - t0;
    report(m, "job decode, batch  ", n, n * (new_tokens - 1), new_tokens - 1);
    printf("job: %d prompts, prefill %.2f s + decode %.2f s: %.1f tok/s (%d new tokens each)\n", n,
           prefill, decode, n * new_tokens / (prefill + decode), new_tokens);
    return 0;
  }
  /* decode BATCH CACHED [STEPS]: one token per sequence at position CACHED.
   * prefill TOKENS [STEPS]: one prompt, a row per position. */
  const int prefill = !strcmp(mode, "prefill"), n = argc > 2 ? atoi(argv[2]) : 64;
  const int cached = prefill ? 0 : argc > 3 ? atoi(argv[3]) : 256;
  const int steps = argc > 3 + !prefill ? atoi(argv[3 + !prefill]) : 8;
  Model *m = build(prefill ? 1 : n, prefill ? n : cached + 1, n);
  int *slot = malloc(n * sizeof(int)), *pos = malloc(n * sizeof(int));
  for (int r = 0; r < n; r++) slot[r] = prefill ? 0 : r, pos[r] = prefill ? r : cached;
  for (int step = -2; step < steps; step++) {
    if (step == 0) reset(m);
    forward(m, n, slot, pos, prefill ? 1 : n);
  }
  report(m, prefill ? "prefill, tokens" : "decode, batch  ", n, n * steps, steps);
  return 0;
}
