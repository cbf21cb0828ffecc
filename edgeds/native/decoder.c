/* The dense decoder of an int8 export (Qwen2 and Llama families: RMSNorm, rotary attention with
 * grouped KV heads, SiLU-gated MLP) as a few OpenMP loops a layer, for the native backend
 * (edgeds/backends/native.py).
 *
 * Why it exists: ONNX Runtime runs the same graph as ~36 nodes a layer, each a dispatch over the
 * thread pool, and its attention computes one query head at a time. On a 16-core AMX Xeon a
 * batch-64 decode step took 118 ms there against 52-58 ms as these loops
 * (benchmarks/fused_decode_step.c, benchmarks/results/xeon-amx-16t.md, session 10).
 *
 * The arithmetic is the export's: each linear layer's input quantized per row to uint8 (zero
 * point 128, scale = peak / 127, rounded half to even like QuantizeLinear), int8 weights with
 * per-channel scales (int8_gemm.h: AMX tiles where the process is granted them, else AVX-512
 * VNNI), float32 everywhere else. The KV cache belongs to the caller: [layers, slots, kv_heads,
 * capacity, head_dim], float32 or float16. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "int8_gemm.h"

enum {
  MAX_HEAD_DIM = 256, /* the attention's key block lives on the stack */
  MAX_GROUP = 16,     /* query heads per KV head: the attention's accumulators */
  MAX_THREADS = 4096, /* more is a caller's mistake, not a machine */
};

typedef struct {
  Weights w;
  float *bias; /* or NULL */
} Linear;

typedef struct {
  Linear qkv, o, gate, up, down;
  float *input_norm, *post_norm;
} Layer;

typedef struct {
  int layers, hidden, heads, kv_heads, head_dim, inter, vocab, threads, rope_positions;
  float eps;
  int amx; /* the process holds the AMX tiles: calls of more than AMX_MIN_ROWS rows use them */
  Layer *layer;
  Linear head;
  float *final_norm, *cos_t, *sin_t;
  const int8_t *embed_q; /* int8 rows with per-row scales ... */
  const float *embed_scale;
  const float *embed_f; /* ... or float32 rows (the caller keeps the table mapped) */
  /* scratch, grown to the largest call */
  int rows_cap, scores_cap;
  float *h, *wide1, *wide2, *qkv, *attn, *row_scale, *scores;
  uint8_t *xq;
} Model;

int ed_amx_granted(void) {
#ifdef __AMX_INT8__
  return amx_permitted();
#else
  return 0;
#endif
}

/* Read from the bits: built with -ffinite-math-only, the compiler takes isnan() to be false. */
static int is_finite(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  return (bits & 0x7f800000u) != 0x7f800000u;
}

/* NULL for what these loops cannot run (checked before anything is allocated, so that no value
 * a caller passes can make them write outside a buffer): the GEMM wants widths in 64s, the
 * attention at most MAX_GROUP heads per KV head of at most MAX_HEAD_DIM in 16s, heads that span
 * the hidden size; the scratch is sized per thread. */
Model *ed_new(int layers, int hidden, int heads, int kv_heads, int head_dim, int inter, int vocab, float eps,
              int threads, int use_amx) {
  if (layers < 1 || heads < 1 || kv_heads < 1 || heads % kv_heads || heads / kv_heads > MAX_GROUP)
    return NULL;
  if (head_dim < 16 || head_dim % 16 || head_dim > MAX_HEAD_DIM || (long)heads * head_dim != hidden) return NULL;
  if (hidden % 64 || inter < 64 || inter % 64 || vocab < 64 || vocab % 64 || (heads + 2 * kv_heads) * head_dim % 64)
    return NULL;
  if (threads < 1 || threads > MAX_THREADS || !is_finite(eps) || eps < 0 || eps >= 1) return NULL;
  Model *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  *m = (Model){.layers = layers, .hidden = hidden, .heads = heads, .kv_heads = kv_heads, .head_dim = head_dim,
               .inter = inter, .vocab = vocab, .threads = threads, .eps = eps};
#ifdef __AMX_INT8__
  m->amx = use_amx && amx_permitted();
#endif
  if (!(m->layer = calloc(layers, sizeof(Layer)))) {
    free(m);
    return NULL;
  }
  return m;
}

int ed_uses_amx(const Model *m) { return m->amx; }

/* A few rows do not fill a 16-row tile: the VNNI kernel, which reads each weight once per four
 * rows, is faster there (fused_decode_step.c at batch 1 on AMX tiles: 28-38 ms a step, padded to
 * 32 rows). AMX calls pad the rows to 32; padded rows are computed and ignored. */
enum { AMX_MIN_ROWS = 16 };

typedef struct {
  Gemm gemm;
  int M;
} Call;

static Call call_for(const Model *m, int rows) {
#ifdef __AMX_INT8__
  if (m->amx && rows > AMX_MIN_ROWS) return (Call){gemm_amx, (rows + 31) / 32 * 32};
#endif
  return (Call){gemm_vnni, rows};
}

static float *copy_floats(const float *src, size_t n) {
  if (!src) return NULL;
  float *dst = malloc(n * sizeof(float));
  memcpy(dst, src, n * sizeof(float));
  return dst;
}

/* which: 0 qkv, 1 o, 2 gate, 3 up, 4 down; layer -1 is the LM head. w int8 [K, N], which must
 * be the shape the model's widths give that layer. Returns 0, or -1 (nothing is kept). */
int ed_set_linear(Model *m, int layer, int which, const int8_t *w, const float *scale, const float *bias, int K, int N) {
  const int H = m->hidden, QKV = (m->heads + 2 * m->kv_heads) * m->head_dim;
  const int shape[5][2] = {{H, QKV}, {H, H}, {H, m->inter}, {H, m->inter}, {m->inter, H}};
  if (layer < -1 || layer >= m->layers || which < 0 || which > 4 || (layer < 0 && which) || !w || !scale) return -1;
  if (layer < 0 ? K != H || N != m->vocab : K != shape[which][0] || N != shape[which][1]) return -1;
  Linear *lin = layer < 0 ? &m->head : &(&m->layer[layer].qkv)[which];
  if (lin->w.packed) return -1; /* set once */
  omp_set_num_threads(m->threads);
  lin->w = pack(w, scale, K, N);
  lin->bias = copy_floats(bias, N);
  return 0;
}

int ed_set_norms(Model *m, int layer, const float *input_norm, const float *post_norm) {
  if (layer < -1 || layer >= m->layers || !input_norm || (layer >= 0 && !post_norm)) return -1;
  float **in = layer < 0 ? &m->final_norm : &m->layer[layer].input_norm;
  if (*in) return -1;
  *in = copy_floats(input_norm, m->hidden);
  if (layer >= 0) m->layer[layer].post_norm = copy_floats(post_norm, m->hidden);
  return 0;
}

/* The caller keeps the table ([vocab, hidden]) alive as long as the model. */
int ed_set_embedding(Model *m, const int8_t *q, const float *row_scale, const float *f) {
  if (q ? !row_scale || f : !f) return -1;
  m->embed_q = q, m->embed_scale = row_scale, m->embed_f = f;
  return 0;
}

/* cos and sin: [positions, head_dim / 2], amplitude included (export/rope.py). */
int ed_set_rope(Model *m, const float *cos_t, const float *sin_t, int positions) {
  if (positions < 1 || !cos_t || !sin_t || m->cos_t) return -1;
  m->rope_positions = positions;
  m->cos_t = copy_floats(cos_t, (size_t)positions * m->head_dim / 2);
  m->sin_t = copy_floats(sin_t, (size_t)positions * m->head_dim / 2);
  return 0;
}

/* Every weight, norm, table: a forward reads all of them. */
static int complete(const Model *m) {
  for (int l = 0; l < m->layers; l++) {
    const Layer *ly = &m->layer[l];
    for (const Linear *lin = &ly->qkv; lin <= &ly->down; lin++)
      if (!lin->w.packed) return 0;
    if (!ly->input_norm || !ly->post_norm) return 0;
  }
  return m->head.w.packed && m->final_norm && m->cos_t && (m->embed_q || m->embed_f);
}

static void free_linear(Linear *l) {
  free(l->w.packed), free(l->w.zero_fix), free(l->w.scale), free(l->bias);
}

void ed_free(Model *m) {
  if (!m) return;
  for (int l = 0; l < m->layers; l++) {
    Layer *ly = &m->layer[l];
    for (Linear *lin = &ly->qkv; lin <= &ly->down; lin++) free_linear(lin);
    free(ly->input_norm), free(ly->post_norm);
  }
  free_linear(&m->head);
  free(m->layer), free(m->final_norm), free(m->cos_t), free(m->sin_t);
  free(m->h), free(m->wide1), free(m->wide2), free(m->qkv), free(m->attn), free(m->row_scale), free(m->scores), free(m->xq);
  free(m);
}

/* aligned_alloc wants a size that is a multiple of the alignment. */
static void *alloc64(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }

/* Returns 0, or -1 where memory ran out (the scratch is then empty, and grown at the next call). */
static int grow_scratch(Model *m, int rows, int longest) {
  const int group = m->heads / m->kv_heads;
  if (rows > m->rows_cap) {
    int wide = m->inter > m->hidden ? m->inter : m->hidden, qkv = (m->heads + 2 * m->kv_heads) * m->head_dim;
    free(m->h), free(m->wide1), free(m->wide2), free(m->qkv), free(m->attn), free(m->row_scale), free(m->xq);
    m->h = alloc64((size_t)rows * m->hidden * 4);
    m->wide1 = alloc64((size_t)rows * wide * 4);
    m->wide2 = alloc64((size_t)rows * wide * 4);
    m->qkv = alloc64((size_t)rows * qkv * 4);
    m->attn = alloc64((size_t)rows * m->hidden * 4);
    m->row_scale = alloc64((size_t)rows * 4);
    m->xq = alloc64((size_t)rows * wide);
    m->rows_cap = rows;
    if (!m->h || !m->wide1 || !m->wide2 || !m->qkv || !m->attn || !m->row_scale || !m->xq) {
      free(m->h), free(m->wide1), free(m->wide2), free(m->qkv), free(m->attn), free(m->row_scale), free(m->xq);
      m->h = m->wide1 = m->wide2 = m->qkv = m->attn = m->row_scale = NULL, m->xq = NULL;
      m->rows_cap = 0;
      return -1;
    }
    memset(m->xq, 128, (size_t)rows * wide);
    memset(m->row_scale, 0, (size_t)rows * 4);
  }
  longest = (longest + 15) / 16 * 16;
  if (longest > m->scores_cap) {
    free(m->scores);
    /* one buffer per thread of a team, which omp_set_num_threads(m->threads) caps */
    m->scores = alloc64((size_t)m->threads * group * longest * 4);
    m->scores_cap = m->scores ? longest : 0;
    if (!m->scores) return -1;
  }
  return 0;
}

/* Lanes [0, n) of a 16-float block: the masked tail of a row of any length. */
static inline __mmask16 first(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

/* Sums in one order written out (16 lanes, then _mm512_reduce_add_ps): built without
 * -fassociative-math, the compiler keeps it, and a row's sum is the same in every call. (Left
 * to the vectorizer, a sum without reassociation is added one element at a time.) */
static inline float sum_of(const float *x, int n) {
  __m512 acc = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(first(n - i), x + i));
  return _mm512_reduce_add_ps(acc);
}

/* In float64: RMSNorm is computed as ONNX Runtime's CPU kernel writes it (a float64 sum, then
 * x / rms * g in float64), so both backends' normed rows meet the int8 rounding alike. */
static inline double sum_of_squares(const float *x, int n) {
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  for (int i = 0; i < n; i += 16) {
    __m512 v = _mm512_maskz_loadu_ps(first(n - i), x + i);
    __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), b = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
    lo = _mm512_fmadd_pd(a, a, lo), hi = _mm512_fmadd_pd(b, b, hi);
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

/* x (after an optional RMSNorm with weights g) -> uint8 row, zero point 128, and its scale. */
static void quantize_row(const Model *m, const float *x, int n, const float *g, float *normed, uint8_t *q, float *scale) {
  const float *src = x;
  if (g) {
    const double rms = sqrt(sum_of_squares(x, n) / n + m->eps);
    for (int i = 0; i < n; i++) normed[i] = (float)(x[i] / rms * g[i]);
    src = normed;
  }
  float peak = 0;
  for (int i = 0; i < n; i++) peak = fmaxf(peak, fabsf(src[i]));
  float s = peak / 127;
  /* A row of zeros: scale 0, and its products come out 0 whatever q holds. */
  for (int i = 0; i < n; i++) q[i] = (uint8_t)((int)nearbyintf(s > 0 ? src[i] / s : 0) + 128);
  *scale = s;
}

static void rotate(float *x, const float *cos_p, const float *sin_p, int half) {
  for (int i = 0; i < half; i++) {
    float a = x[i], b = x[i + half];
    x[i] = a * cos_p[i] - b * sin_p[i];
    x[i + half] = b * cos_p[i] + a * sin_p[i];
  }
}

static inline __m512 load16(const void *cache, int f16, size_t at) {
  return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)cache + at)))
             : _mm512_loadu_ps((const float *)cache + at);
}

/* Lane i of the result: the sum of v[i]'s lanes. Pairs, then 64-bit halves, then 128-bit lanes
 * are added across vectors: 30 instructions for 16 sums. */
static inline __m512 hsum16(const __m512 v[16]) {
  __m512 a[8], b[4];
  for (int i = 0; i < 8; i++) a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; i++) {
    __m512d x = _mm512_castps_pd(a[2 * i]), y = _mm512_castps_pd(a[2 * i + 1]);
    b[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x88), _mm512_shuffle_f32x4(b[0], b[1], 0xDD));
  __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], 0x88), _mm512_shuffle_f32x4(b[2], b[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, 0x88), _mm512_shuffle_f32x4(d0, d1, 0xDD));
}

/* The `group` query heads that share one KV head, over positions [0, len) of its cache: every
 * cached key and value is read (and widened from float16) once for all of them. */
static void attend(const float *q, const void *k, const void *v, int f16, size_t base, int len, int group, int d,
                   float *out, float *scores) {
  const __m512 scale = _mm512_set1_ps(1.0f / sqrtf((float)d));
  /* Each head's scores start on a 64-byte line (grow_scratch rounds the rows too): where the
   * vectorized loops below split a row into body and tail cannot depend on which thread's
   * buffer, or which call's longest row, it lies in. */
  const int ld = (len + 15) / 16 * 16;
  /* Scores 16 keys at a time: the keys widened once into `block`, then per head 16 dot products
   * whose sums one transposing reduction (hsum16) lays side by side, instead of 16 reductions. */
  float block[16 * MAX_HEAD_DIM] __attribute__((aligned(64)));
  for (int t0 = 0; t0 < len; t0 += 16) {
    const int nt = len - t0 < 16 ? len - t0 : 16;
    for (int tt = 0; tt < nt; tt++)
      for (int c = 0; c < d; c += 16) _mm512_store_ps(block + tt * d + c, load16(k, f16, base + (size_t)(t0 + tt) * d + c));
    for (int h = 0; h < group; h++) {
      __m512 acc[16];
      for (int tt = 0; tt < 16; tt++) acc[tt] = _mm512_setzero_ps();
      for (int c = 0; c < d; c += 16) {
        __m512 qc = _mm512_loadu_ps(q + h * d + c);
        for (int tt = 0; tt < nt; tt++) acc[tt] = _mm512_fmadd_ps(qc, _mm512_load_ps(block + tt * d + c), acc[tt]);
      }
      _mm512_mask_storeu_ps(scores + h * ld + t0, (__mmask16)((1u << nt) - 1), _mm512_mul_ps(hsum16(acc), scale));
    }
  }
  for (int h = 0; h < group; h++) {
    float *s = scores + h * ld, peak = -FLT_MAX;
    for (int t = 0; t < len; t++) peak = fmaxf(peak, s[t]);
    /* Far below the peak a weight is 0, not a subnormal: those cost Intel cores a microcode
     * assist per operation, and the process keeps subnormals (it is linked without fast-math). */
    for (int t = 0; t < len; t++) s[t] = s[t] - peak < -80.0f ? 0.0f : expf(s[t] - peak);
    const float total = sum_of(s, len);
    for (int t = 0; t < len; t++) s[t] /= total;
  }
  /* Each value row is read once per 64 of its columns for all heads: 4 x group accumulators. */
  for (int c0 = 0; c0 < d; c0 += 64) {
    const int chunks = d - c0 < 64 ? (d - c0) / 16 : 4;
    __m512 acc[16][4];
    for (int h = 0; h < group; h++)
      for (int c = 0; c < chunks; c++) acc[h][c] = _mm512_setzero_ps();
    for (int t = 0; t < len; t++) {
      __m512 vc[4];
      for (int c = 0; c < chunks; c++) vc[c] = load16(v, f16, base + (size_t)t * d + c0 + 16 * c);
      for (int h = 0; h < group; h++) {
        __m512 p = _mm512_set1_ps(scores[h * ld + t]);
        for (int c = 0; c < chunks; c++) acc[h][c] = _mm512_fmadd_ps(p, vc[c], acc[h][c]);
      }
    }
    for (int h = 0; h < group; h++)
      for (int c = 0; c < chunks; c++) _mm512_storeu_ps(out + h * d + c0 + 16 * c, acc[h][c]);
  }
}

static void linear(const Model *m, const Linear *lin, Call c, const float *row_scale, float *y, int rows) {
  c.gemm(m->xq, c.M, &lin->w, row_scale, y);
  if (lin->bias)
#pragma omp parallel for
    for (int r = 0; r < rows; r++)
      for (int n = 0; n < lin->w.N; n++) y[(size_t)r * lin->w.N + n] += lin->bias[n];
}

/* `rows` tokens: row r is token ids[r] at position pos[r] of cache slot slot[r], attending to that
 * slot's positions up to its own (rows of one slot come in position order; earlier positions are
 * already cached or in this call). Writes logits of the rows `logit_rows` ([n_logits] row
 * indices) to `logits`, which has room for n_logits rounded up to 32 rows of `vocab`.
 * Returns 0; -1 for a position outside the rope table or the cache, -2 for a token id outside
 * the vocabulary, -3 for a logit row outside the call, -4 for a model not completely set or
 * counts out of range, -5 for memory that could not be had (nothing is computed then). */
int ed_forward(Model *m, int rows, const int64_t *ids, const int32_t *slot, const int32_t *pos, int n_logits,
               const int32_t *logit_rows, void *k_cache, void *v_cache, int f16, int slots, int capacity, float *logits) {
  const int H = m->hidden, D = m->head_dim, NH = m->heads, NKV = m->kv_heads, group = NH / NKV, I = m->inter;
  const int QKV = (NH + 2 * NKV) * D;
  const Call c = call_for(m, rows), head = call_for(m, n_logits);
  const size_t per_layer = (size_t)slots * NKV * capacity * D, elem = f16 ? 2 : 4;
  if (!complete(m) || rows < 1 || n_logits < 0 || n_logits > rows || slots < 1 || capacity < 1 || !logits) return -4;
  int longest = 0;
  for (int r = 0; r < rows; r++) {
    if (pos[r] < 0 || pos[r] >= capacity || pos[r] >= m->rope_positions || slot[r] < 0 || slot[r] >= slots) return -1;
    if (ids[r] < 0 || ids[r] >= m->vocab) return -2;
    longest = pos[r] + 1 > longest ? pos[r] + 1 : longest;
  }
  for (int i = 0; i < n_logits; i++)
    if (logit_rows[i] < 0 || logit_rows[i] >= rows) return -3;
  omp_set_num_threads(m->threads);
  if (grow_scratch(m, c.M > head.M ? c.M : head.M, longest)) return -5;
  float *h = m->h, *t1 = m->wide1, *t2 = m->wide2, *qkv = m->qkv, *attn = m->attn, *rs = m->row_scale;
  uint8_t *xq = m->xq;

#pragma omp parallel for
  for (int r = 0; r < rows; r++) {
    float *dst = h + (size_t)r * H;
    if (m->embed_q) {
      const int8_t *src = m->embed_q + (size_t)ids[r] * H;
      for (int i = 0; i < H; i++) dst[i] = src[i] * m->embed_scale[ids[r]];
    } else {
      memcpy(dst, m->embed_f + (size_t)ids[r] * H, H * sizeof(float));
    }
  }
  for (int l = 0; l < m->layers; l++) {
    const Layer *ly = &m->layer[l];
    char *kl = (char *)k_cache + l * per_layer * elem, *vl = (char *)v_cache + l * per_layer * elem;
#pragma omp parallel for
    for (int r = 0; r < rows; r++) quantize_row(m, h + (size_t)r * H, H, ly->input_norm, attn + (size_t)r * H, xq + (size_t)r * H, rs + r);
    linear(m, &ly->qkv, c, rs, qkv, rows);
#pragma omp parallel for
    for (int r = 0; r < rows; r++) {
      float *x = qkv + (size_t)r * QKV;
      const float *c = m->cos_t + (size_t)pos[r] * D / 2, *s = m->sin_t + (size_t)pos[r] * D / 2;
      for (int hd = 0; hd < NH + NKV; hd++) rotate(x + hd * D, c, s, D / 2);
      for (int g = 0; g < NKV; g++) {
        size_t at = (((size_t)slot[r] * NKV + g) * capacity + pos[r]) * D;
        const float *key = x + (NH + g) * D, *val = x + (NH + NKV + g) * D;
        if (f16) {
          for (int i = 0; i < D; i += 16) {
            _mm256_storeu_si256((__m256i *)((uint16_t *)kl + at + i), _mm512_cvtps_ph(_mm512_loadu_ps(key + i), _MM_FROUND_TO_NEAREST_INT));
            _mm256_storeu_si256((__m256i *)((uint16_t *)vl + at + i), _mm512_cvtps_ph(_mm512_loadu_ps(val + i), _MM_FROUND_TO_NEAREST_INT));
          }
        } else {
          memcpy((float *)kl + at, key, D * sizeof(float));
          memcpy((float *)vl + at, val, D * sizeof(float));
        }
      }
    }
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int r = 0; r < rows; r++)
      for (int g = 0; g < NKV; g++)
        attend(qkv + (size_t)r * QKV + g * group * D, kl, vl, f16, ((size_t)slot[r] * NKV + g) * capacity * D, pos[r] + 1,
               group, D, attn + (size_t)r * H + g * group * D, m->scores + (size_t)omp_get_thread_num() * group * m->scores_cap);
#pragma omp parallel for
    for (int r = 0; r < rows; r++) quantize_row(m, attn + (size_t)r * H, H, NULL, NULL, xq + (size_t)r * H, rs + r);
    linear(m, &ly->o, c, rs, t1, rows);
#pragma omp parallel for
    for (int r = 0; r < rows; r++) {
      float *x = h + (size_t)r * H;
      for (int i = 0; i < H; i++) x[i] += t1[(size_t)r * H + i];
      quantize_row(m, x, H, ly->post_norm, attn + (size_t)r * H, xq + (size_t)r * H, rs + r);
    }
    linear(m, &ly->gate, c, rs, t1, rows);
    linear(m, &ly->up, c, rs, t2, rows);
#pragma omp parallel for
    for (int r = 0; r < rows; r++) {
      float *g = t1 + (size_t)r * I, *u = t2 + (size_t)r * I;
      for (int i = 0; i < I; i++) g[i] = g[i] / (1 + expf(-g[i])) * u[i];
      quantize_row(m, g, I, NULL, NULL, xq + (size_t)r * I, rs + r);
    }
    linear(m, &ly->down, c, rs, t1, rows);
#pragma omp parallel for
    for (int r = 0; r < rows; r++)
      for (int i = 0; i < H; i++) h[(size_t)r * H + i] += t1[(size_t)r * H + i];
  }
#pragma omp parallel for
  for (int i = 0; i < n_logits; i++)
    quantize_row(m, h + (size_t)logit_rows[i] * H, H, m->final_norm, attn + (size_t)i * H, xq + (size_t)i * H, rs + i);
  linear(m, &m->head, head, rs, logits, n_logits);
  return 0;
}
