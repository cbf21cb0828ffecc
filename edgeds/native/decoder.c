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
 * point 128, scale = peak / 127, rounded half to even like QuantizeLinear; with the manifest's
 * "int16 per row", ed_set_activations, a second plane for what that rounding left, as the MLA
 * decoder does: int8_gemm.h), int8 weights with
 * per-channel scales (int8_gemm.h: AMX tiles where the process is granted them, else AVX-512
 * VNNI), float32 everywhere else but a prompt's attention (flash_prefill.h: bf16 products,
 * float32 sums). The KV cache belongs to the caller, in blocks (below), float32 or float16. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "flash_prefill.h"
#include "int8_gemm.h"
#include "lane_sums.h"
#ifndef __AVX512F__
#include "decode_avx2.h"
#endif

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
  const float *embed_f; /* ... or float32 rows (the caller keeps the table mapped) ... */
  const uint16_t *embed_h; /* ... or float16 rows, read in place */
  int planes; /* activations: 1 int8 plane per row, or 2 (ed_set_activations) */
  /* scratch, grown to the largest call */
  int rows_cap;
  float *h, *wide1, *wide2, *qkv, *attn, *row_scale;
  uint8_t *xq;
  float *attn_scratch; /* per thread: a tile's scores, a partial and a running state */
  float *partials;     /* flash-decoding's partial states, one per (tile, KV head, split) */
  void *prompt_scratch; /* per thread: flash_prefill.h's tile buffers */
  int bf16;             /* prompt attention takes vdpbf16ps (else its float32 FMA copy) */
  size_t partials_cap;
  void *tiles;         /* Tile[rows_cap] and int[rows_cap + 1], by grow_scratch */
  int *part_at;
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
Model *ed_new(int layers, int hidden, int heads, int kv_heads, int head_dim, int inter, int vocab,
              float eps, int threads, int use_amx) {
  if (layers < 1 || heads < 1 || kv_heads < 1 || heads % kv_heads || heads / kv_heads > MAX_GROUP)
    return NULL;
  if (head_dim < 16 || head_dim % 16 || head_dim > MAX_HEAD_DIM || (long)heads * head_dim != hidden)
    return NULL;
  if (hidden % 64 || inter < 64 || inter % 64 || vocab < 64 || vocab % 64 ||
      (heads + 2 * kv_heads) * head_dim % 64)
    return NULL;
  if (threads < 1 || threads > MAX_THREADS || !is_finite(eps) || eps < 0 || eps >= 1) return NULL;
  Model *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  *m = (Model){.layers = layers, .hidden = hidden, .heads = heads, .kv_heads = kv_heads,
               .head_dim = head_dim, .inter = inter, .vocab = vocab, .threads = threads, .eps = eps,
               .planes = 1};
#ifdef __AMX_INT8__
  m->amx = use_amx && amx_permitted();
#endif
  m->bf16 = bf16_supported();
  if (!(m->layer = calloc(layers, sizeof(Layer)))) {
    free(m);
    return NULL;
  }
  return m;
}

int ed_uses_amx(const Model *m) { return m->amx; }

/* planes 1: matmul inputs int8 per row (the ONNX graph's); 2: with a second plane for the
 * rounding's remainder (manifest quantization.activations "int16 per row"). Before the first
 * ed_forward. Returns 0, or -1 for another count. */
int ed_set_activations(Model *m, int planes) {
  if (planes != 1 && planes != 2) return -1;
  m->planes = planes;
  m->rows_cap = 0; /* the quantized rows' scratch is sized by the planes: grown at the next call */
  return 0;
}

/* want 0: prompt attention in float32 FMAs; 1: in vdpbf16ps where the CPU has it (the default);
 * -1: ask. Returns what is in force (the two give the same products in the same order). */
int ed_prompt_bf16(Model *m, int want) {
  if (want >= 0) m->bf16 = want && bf16_supported();
  return m->bf16;
}

/* A few rows do not fill a 16-row tile: the VNNI kernel, which reads each weight once per four
 * rows, is faster there (fused_decode_step.c at batch 1 on AMX tiles: 28-38 ms a step, padded to
 * 32 rows). AMX calls pad the rows to 32; padded rows are computed and ignored. */
enum { AMX_MIN_ROWS = 16 };

typedef struct {
  Gemm gemm;
  int M; /* rows of A: the call's rows times the planes, padded for AMX; M / planes rows out */
} Call;

/* The kernel is chosen by the rows of A, planes included: 16 decoding sequences' two planes fill
 * AMX's 32-row blocks. Integer sums are exact, so a row's logits do not depend on which runs. */
static Call call_for(const Model *m, int rows) {
#ifdef __AMX_INT8__
  if (m->amx && rows * m->planes > AMX_MIN_ROWS)
    return (Call){gemm_amx, (rows * m->planes + 31) / 32 * 32};
#endif
  return (Call){gemm_vnni, rows * m->planes};
}

static float *copy_floats(const float *src, size_t n) {
  if (!src) return NULL;
  float *dst = malloc(n * sizeof(float));
  memcpy(dst, src, n * sizeof(float));
  return dst;
}

/* which: 0 qkv, 1 o, 2 gate, 3 up, 4 down; layer -1 is the LM head. w int8 [K, N], which must
 * be the shape the model's widths give that layer. Returns 0, or -1 (nothing is kept). */
int ed_set_linear(Model *m, int layer, int which, const int8_t *w, const float *scale,
                  const float *bias, int K, int N) {
  const int H = m->hidden, QKV = (m->heads + 2 * m->kv_heads) * m->head_dim;
  const int shape[5][2] = {{H, QKV}, {H, H}, {H, m->inter}, {H, m->inter}, {m->inter, H}};
  if (layer < -1 || layer >= m->layers || which < 0 || which > 4 || (layer < 0 && which) ||
      !w || !scale)
    return -1;
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
  m->embed_q = q, m->embed_scale = row_scale, m->embed_f = f, m->embed_h = NULL;
  return 0;
}

/* A float16 table ([vocab, hidden]), read in place a row at a time (not widened to float32:
 * that would be twice its bytes in memory). */
int ed_set_embedding_f16(Model *m, const uint16_t *h) {
  if (!h) return -1;
  m->embed_q = NULL, m->embed_scale = NULL, m->embed_f = NULL, m->embed_h = h;
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

/* Per thread, for whichever prompt kernel runs. */
static size_t prompt_scratch_bytes(int rows, int D) {
  size_t bytes = prefill_scratch_bytes(rows, D);
#ifdef __AMX_BF16__
  if (amx_scratch_bytes(rows, D) > bytes) bytes = amx_scratch_bytes(rows, D);
#endif
  return bytes;
}

/* Every weight, norm, table: a forward reads all of them. */
static int complete(const Model *m) {
  for (int l = 0; l < m->layers; l++) {
    const Layer *ly = &m->layer[l];
    for (const Linear *lin = &ly->qkv; lin <= &ly->down; lin++)
      if (!lin->w.packed) return 0;
    if (!ly->input_norm || !ly->post_norm) return 0;
  }
  return m->head.w.packed && m->final_norm && m->cos_t && (m->embed_q || m->embed_f || m->embed_h);
}

static void free_linear(Linear *l) {
  free(l->w.packed), free(l->w.col_sums), free(l->w.scale), free(l->bias);
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
  free(m->h), free(m->wide1), free(m->wide2), free(m->qkv), free(m->attn), free(m->row_scale),
      free(m->xq);
  free(m->attn_scratch), free(m->partials), free(m->tiles), free(m->part_at),
      free(m->prompt_scratch);
  free(m);
}

/* aligned_alloc wants a size that is a multiple of the alignment. */
static void *alloc64(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }

/* Room for `rows` rows out of each kernel (the quantized rows: `planes` of them a row). Returns 0,
 * or -1 where memory ran out (the scratch is then empty, and grown at the next call). */
static int grow_scratch(Model *m, int rows) {
  if (rows > m->rows_cap) {
    int wide = m->inter > m->hidden ? m->inter : m->hidden;
    int qkv = (m->heads + 2 * m->kv_heads) * m->head_dim;
    free(m->h), free(m->wide1), free(m->wide2), free(m->qkv), free(m->attn), free(m->row_scale),
        free(m->xq);
    free(m->tiles), free(m->part_at);
    m->tiles = malloc((size_t)rows * 4 * sizeof(int));
    m->part_at = malloc(((size_t)rows + 1) * sizeof(int));
    m->h = alloc64((size_t)rows * m->hidden * 4);
    m->wide1 = alloc64((size_t)rows * wide * 4);
    m->wide2 = alloc64((size_t)rows * wide * 4);
    m->qkv = alloc64((size_t)rows * qkv * 4);
    m->attn = alloc64((size_t)rows * m->hidden * 4);
    m->row_scale = alloc64((size_t)rows * 4);
    m->xq = alloc64((size_t)rows * m->planes * wide);
    m->rows_cap = rows;
    if (!m->h || !m->wide1 || !m->wide2 || !m->qkv || !m->attn || !m->row_scale || !m->xq ||
        !m->tiles || !m->part_at) {
      free(m->h), free(m->wide1), free(m->wide2), free(m->qkv), free(m->attn), free(m->row_scale),
          free(m->xq);
      free(m->tiles), free(m->part_at);
      m->h = m->wide1 = m->wide2 = m->qkv = m->attn = m->row_scale = NULL, m->xq = NULL;
      m->tiles = NULL, m->part_at = NULL;
      m->rows_cap = 0;
      return -1;
    }
    memset(m->xq, 128, (size_t)rows * m->planes * wide);
    memset(m->row_scale, 0, (size_t)rows * 4);
  }
  return 0;
}

/* Lanes [0, n) of a 16-float block: the masked tail of a row of any length. */
static inline __mmask16 first(int n) {
  return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);
}

/* Sums in one order written out (16 lanes, then _mm512_reduce_add_ps): built without
 * -fassociative-math, the compiler keeps it, and a row's sum is the same in every call. (Left
 * to the vectorizer, a sum without reassociation is added one element at a time.) */
static inline float sum_of(const float *x, int n) {
  __m512 acc = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16)
    acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(first(n - i), x + i));
  return _mm512_reduce_add_ps(acc);
}

/* In float64: RMSNorm is computed as ONNX Runtime's CPU kernel writes it (a float64 sum, then
 * x / rms * g in float64), so both backends' normed rows meet the int8 rounding alike. */
static inline double sum_of_squares(const float *x, int n) {
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  for (int i = 0; i < n; i += 16) {
    __m512 v = _mm512_maskz_loadu_ps(first(n - i), x + i);
    __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    __m512d b = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
    lo = _mm512_fmadd_pd(a, a, lo), hi = _mm512_fmadd_pd(b, b, hi);
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

/* x (after an optional RMSNorm with weights g) -> uint8 row, zero point 128, and its scale; with
 * two planes the remainder's row follows it (the A rows of int8_gemm.h's kernels). */
static void quantize_row(const Model *m, const float *x, int n, const float *g, float *normed,
                         uint8_t *q, float *scale) {
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
  if (m->planes == 2) quantize_remainder(src, n, s, q, q + n);
  *scale = s;
}

/* Row r's quantized row(s) for a matmul of input width n. */
static inline uint8_t *act_row(const Model *m, int r, int n) {
  return m->xq + (size_t)r * m->planes * n;
}

static void rotate(float *x, const float *cos_p, const float *sin_p, int half) {
  for (int i = 0; i < half; i++) {
    float a = x[i], b = x[i + half];
    x[i] = a * cos_p[i] - b * sin_p[i];
    x[i + half] = b * cos_p[i] + a * sin_p[i];
  }
}

/* The KV cache: blocks of BLOCK positions of one sequence. A block's keys (and, in a second block
 * of the same id, its values) are [layers, kv_heads, BLOCK, head_dim] float32 or float16, one
 * contiguous piece of memory, so a block of positions is copied in or out (a prefix cache) with one
 * memcpy each. k_blocks[id] / v_blocks[id] are the blocks' addresses; table[slot * max_blocks + j]
 * is the id of the block holding positions [j * BLOCK, (j + 1) * BLOCK) of that slot's sequence.
 * Blocks are taken as sequences grow, so memory follows the tokens held, not slots x capacity
 * (edgeds/backends/native.py: the pool). */
enum {
  BLOCK = 64,  /* positions a block holds */
  SPLIT = 256, /* keys one partial softmax covers: decode work splits over these (flash-decoding) */
  TILE = 8,    /* query rows of one sequence sharing each key load (decode rows of a refill) */
  PROMPT_TILE = 16, /* the same for a prompt's rows (flash_prefill.h), times the group's heads */
#ifdef __AVX512F__
  AHEAD = 128, /* how far ahead of its products decode prefetches keys into L2 (two blocks) */
#else
  AHEAD = 64, /* the same into L1, where the AVX2 build prefetches them (a block: 16-32 KB) */
#endif
};

_Static_assert((int)BLOCK == (int)KEY_BLOCK,
               "prompt attention's key blocks are the cache's blocks");

typedef struct {
  void *const *kb, *const *vb;
  const int32_t *table;
  int max_blocks, f16;
} Cache;

/* Rows r0 .. r0 + n - 1: one sequence (slot) at positions p0 .. p0 + n - 1. */
typedef struct {
  int r0, n, slot, p0;
} Tile;

/* Element offset of position t inside its block, for layer l and KV head g. */
static inline size_t in_block(const Model *m, int l, int g, int t) {
  return (((size_t)l * m->kv_heads + g) * BLOCK + t % BLOCK) * m->head_dim;
}

static inline const void *block_of(const Cache *c, void *const *blocks, int slot, int t) {
  return blocks[c->table[(size_t)slot * c->max_blocks + t / BLOCK]];
}

static inline __m512 load16(const void *base, int f16, size_t at) {
  return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)base + at)))
             : _mm512_loadu_ps((const float *)base + at);
}

/* Bytes [from, to) of p (to at most end) into L2, a line at a time. */
static inline void prefetch_l2(const char *p, int from, int to, int end) {
  for (int off = from; off < to && off < end; off += 64) _mm_prefetch(p + off, _MM_HINT_T1);
}

/* A partial softmax state per (row, head): the unnormalized weighted sum of values (head_dim
 * floats), then the peak score and the sum of exp(score - peak); STATE floats apart. */
static inline int state_floats(const Model *m) { return m->head_dim + 16; }

enum { MAX_PASS_HEADS = 6 }; /* 6 x 4 sums + 6 weights + a value: 31 of 32 registers */

/* The weighted sums of `heads` consecutive heads (weights w, SPLIT floats apart, zeros past n;
 * sums into out, ST floats apart) over the split's n keys from s0, each value loaded once for
 * all of them. Every head's column sums add keys in order one multiply-add at a time, whatever
 * the heads a pass holds: the bits do not depend on the pass. */
static inline __attribute__((always_inline)) void
values_pass(const Model *m, const Cache *c, int l, const Tile *tl, int g, int s0, int n,
            const float *w, float *out, const int heads, const int D) {
  const int ST = state_floats(m), f16 = c->f16;
#ifndef __AVX512F__
  const void *rows[SPLIT / BLOCK + 1];
  int count[SPLIT / BLOCK + 1], runs = 0;
  for (int b0 = s0; b0 < s0 + n; b0 += BLOCK, runs++) {
    rows[runs] = (const char *)block_of(c, c->vb, tl->slot, b0) +
                 in_block(m, l, g, b0) * (f16 ? 2 : 4);
    count[runs] = (b0 + BLOCK < s0 + n ? b0 + BLOCK : s0 + n) - b0;
  }
  values_avx2(rows, count, runs, f16, w, SPLIT, out, ST, heads, D);
#else
  const int X = D / 16, CM = heads <= 2 ? 8 : 4;
  for (int x0 = 0; x0 < X; x0 += CM) {
    const int C = X - x0 < CM ? X - x0 : CM;
    __m512 acc[MAX_PASS_HEADS][8];
    for (int j = 0; j < heads; j++)
      for (int x = 0; x < C; x++) acc[j][x] = _mm512_setzero_ps();
    for (int b0 = s0; b0 < s0 + n; b0 += BLOCK) {
      const void *vb = block_of(c, c->vb, tl->slot, b0);
      const int b1 = b0 + BLOCK < s0 + n ? b0 + BLOCK : s0 + n;
      for (int t = b0; t < b1; t++) {
        const size_t at = in_block(m, l, g, t) + 16 * x0;
        for (int x = 0; x < C; x++) {
          const __m512 v = load16(vb, f16, at + 16 * x);
          for (int j = 0; j < heads; j++)
            acc[j][x] =
                _mm512_fmadd_ps(_mm512_set1_ps(w[(size_t)j * SPLIT + t - s0]), v, acc[j][x]);
        }
      }
    }
    for (int j = 0; j < heads; j++)
      for (int x = 0; x < C; x++) _mm512_storeu_ps(out + (size_t)j * ST + 16 * (x0 + x), acc[j][x]);
  }
#endif
}

/* Split s (keys [s * SPLIT, (s + 1) * SPLIT)) of KV head g's attention for the tile's rows that
 * reach it: each row's partial state into part[(i * group + h) * STATE]. A row's arithmetic is
 * the same whatever tile holds it (its dot products, softmax and sums are its own; only the key
 * loads are shared), and the splits are fixed positions, so a decode row's attention is bit for
 * bit the same at any batch, split over threads or not (a prompt's rows take flash_prefill.h).
 * Not inlined: one copy of the code per head width serves every caller. */
static inline __attribute__((always_inline)) void
attend_split_impl(const Model *m, const Cache *c, int l, const Tile *tl, int g, int s,
                  const float *qkv, float *scores, float *part, const int D) {
  const int group = m->heads / m->kv_heads, QKV = (m->heads + 2 * m->kv_heads) * D;
  const int ST = state_floats(m), elem_f16 = c->f16, X = D / 16;
  const int s0 = s * SPLIT, last = tl->p0 + tl->n, s1 = last < s0 + SPLIT ? last : s0 + SPLIT;
  const int i0 = s0 - tl->p0 > 0 ? s0 - tl->p0 : 0; /* rows before i0 end before this split */
  const float scale = 1.0f / sqrtf((float)D);
  float block[16 * MAX_HEAD_DIM] __attribute__((aligned(64)));
  for (int t0 = s0; t0 < s1; t0 += 16) {
    /* 16 keys at a time, zeros past the split's end: every loop below has fixed trip counts (a
     * variable count cost a compare a multiply-add, and kept the sums in memory). */
    const int nt = s1 - t0 < 16 ? s1 - t0 : 16;
    const void *kb = block_of(c, c->kb, tl->slot, t0);
#ifndef __AVX512F__
    const float *keys = block;
    /* float32 keys in place: 16 keys are one contiguous run of their block (the copy took a
     * fifth of the AVX2 build's time at 16,384 positions) */
    if (!elem_f16 && nt == 16)
      keys = (const float *)kb + in_block(m, l, g, t0);
    else
#endif
    for (int tt = 0; tt < 16; tt++)
      for (int x = 0; x < X; x++)
        _mm512_store_ps(block + tt * D + 16 * x,
                        tt < nt ? load16(kb, elem_f16, in_block(m, l, g, t0 + tt) + 16 * x)
                                : _mm512_setzero_ps());
    /* The keys AHEAD positions on and these 16 keys' values on their way from memory while
     * the products run: decode reads each once, and waited on them (the loads above took 40% of
     * its time at 4,000 positions on one thread). Past the split's end too, up to the tile's:
     * the next split's first keys come in while this one's softmax and values run. */
    const int elem = elem_f16 ? 2 : 4, ahead = t0 + AHEAD;
    const char *next = ahead < last ? (const char *)block_of(c, c->kb, tl->slot, ahead) +
                                          in_block(m, l, g, ahead) * elem
                                    : NULL;
    const char *vnow =
        (const char *)block_of(c, c->vb, tl->slot, t0) + in_block(m, l, g, t0) * elem;
    const int next_bytes = next ? (last - ahead < 16 ? last - ahead : 16) * D * elem : 0,
              vnow_bytes = nt * D * elem;
    /* each head's share of both, in whole lines */
    const int next_share = (next_bytes / group + 63) / 64 * 64,
              vnow_share = (vnow_bytes / group + 63) / 64 * 64;
#ifndef __AVX512F__
    for (int off = 0; off < next_bytes; off += 64) _mm_prefetch(next + off, _MM_HINT_T0);
    for (int off = 0; off < vnow_bytes; off += 64) _mm_prefetch(vnow + off, _MM_HINT_T1);
#endif
#ifdef __AVX512F__
    int fetched = 0; /* by the first row that reaches these keys */
#endif
    for (int i = i0; i < tl->n; i++) {
      const int len = tl->p0 + i + 1, ni = len - t0 < nt ? len - t0 : nt;
      if (ni <= 0) continue;
      const float *q = qkv + (size_t)(tl->r0 + i) * QKV + g * group * D;
#ifndef __AVX512F__
      scores16_avx2(keys, q, group, scale,
                    scores + (size_t)i * group * SPLIT + t0 - s0, SPLIT, D);
#else
      for (int h = 0; h < group; h++) {
        /* Into L2, a slice of the lines before each head's products: all of them at once
         * (256 lines for float32) left decode waiting on memory at half the bandwidth one core
         * reads at (results/long-context.md). */
        if (!fetched) {
          prefetch_l2(next, h * next_share, (h + 1) * next_share, next_bytes);
          prefetch_l2(vnow, h * vnow_share, (h + 1) * vnow_share, vnow_bytes);
        }
        __m512 acc[16];
        for (int tt = 0; tt < 16; tt++) acc[tt] = _mm512_setzero_ps();
        for (int x = 0; x < X; x++) {
          const __m512 qc = _mm512_loadu_ps(q + h * D + 16 * x);
          for (int tt = 0; tt < 16; tt++)
            acc[tt] = _mm512_fmadd_ps(qc, _mm512_load_ps(block + tt * D + 16 * x), acc[tt]);
        }
        _mm512_mask_storeu_ps(scores + (size_t)(i * group + h) * SPLIT + t0 - s0,
                              (__mmask16)((1u << ni) - 1), _mm512_mul_ps(hsum16(acc), _mm512_set1_ps(scale)));
      }
      fetched = 1;
#endif
    }
  }
  for (int i = i0; i < tl->n; i++) {
    const int len = tl->p0 + i + 1, n = (len < s1 ? len : s1) - s0;
    for (int h = 0; h < group; h++) {
      float *sc = scores + (size_t)(i * group + h) * SPLIT;
      __m512 top = _mm512_set1_ps(-FLT_MAX);
      for (int t = 0; t < n; t += 16)
        top = _mm512_mask_max_ps(top, first(n - t), top, _mm512_loadu_ps(sc + t));
      const __m512 peak = _mm512_set1_ps(_mm512_reduce_max_ps(top));
      /* Weights past n are zeros: the value loop below takes keys in 16s. */
      for (int t = 0; t < n; t += 16)
        _mm512_storeu_ps(
            sc + t,
            _mm512_maskz_mov_ps(first(n - t), exp16(_mm512_sub_ps(_mm512_loadu_ps(sc + t), peak))));
      float *st = part + (size_t)(i * group + h) * ST;
      st[D] = _mm512_cvtss_f32(peak), st[D + 1] = sum_of(sc, n);
    }
    /* The group's heads in as few passes as the registers allow (up to 6 heads x 64 columns
     * of sums), so that each value is read from memory, and converted, once a pass: the
     * values of a 256-key split are 64-128 KB, past L1, and two heads a pass read them three
     * times for the 1.5B's six. */
    const int passes = (group + MAX_PASS_HEADS - 1) / MAX_PASS_HEADS;
    for (int h = 0, left = passes; h < group; left--) {
      const int hp = (group - h + left - 1) / left; /* the heads split evenly over the passes */
      const float *w = scores + (size_t)(i * group + h) * SPLIT;
      float *out = part + (size_t)(i * group + h) * ST;
      switch (hp) {
      case 1: values_pass(m, c, l, tl, g, s0, n, w, out, 1, D); break;
      case 2: values_pass(m, c, l, tl, g, s0, n, w, out, 2, D); break;
      case 3: values_pass(m, c, l, tl, g, s0, n, w, out, 3, D); break;
      case 4: values_pass(m, c, l, tl, g, s0, n, w, out, 4, D); break;
      case 5: values_pass(m, c, l, tl, g, s0, n, w, out, 5, D); break;
      default: values_pass(m, c, l, tl, g, s0, n, w, out, 6, D); break;
      }
      h += hp;
    }
  }
}

static __attribute__((noinline)) void attend_split(const Model *m, const Cache *c, int l,
                                                   const Tile *tl, int g, int s, const float *qkv,
                                                   float *scores, float *part) {
  if (m->head_dim == 128)
    attend_split_impl(m, c, l, tl, g, s, qkv, scores, part, 128);
  else if (m->head_dim == 64)
    attend_split_impl(m, c, l, tl, g, s, qkv, scores, part, 64);
  else
    attend_split_impl(m, c, l, tl, g, s, qkv, scores, part, m->head_dim);
}

/* state <- state merged with a later split's partial p (flash-decoding's merge, in split order). */
static __attribute__((noinline)) void merge_state(float *st, const float *p, int D) {
  const float peak = fmaxf(st[D], p[D]), a = expf(st[D] - peak), b = expf(p[D] - peak);
  const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
  for (int x = 0; x < D; x += 16)
    _mm512_storeu_ps(st + x, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(st + x), va),
                                           _mm512_mul_ps(_mm512_loadu_ps(p + x), vb)));
  st[D + 1] = st[D + 1] * a + p[D + 1] * b;
  st[D] = peak;
}

static __attribute__((noinline)) void finish_state(const float *st, int D, float *out) {
  const __m512 inv = _mm512_set1_ps(1.0f / st[D + 1]);
  for (int x = 0; x < D; x += 16)
    _mm512_storeu_ps(out + x, _mm512_mul_ps(_mm512_loadu_ps(st + x), inv));
}

static inline int splits_of(const Tile *t) { return (t->p0 + t->n + SPLIT - 1) / SPLIT; }

/* Split s's partials of tile t merged into the tile's running states (split 0 starts them). */
static void merge_split(const Model *m, const Tile *t, int s, float *state, const float *part) {
  const int group = m->heads / m->kv_heads, ST = state_floats(m);
  const int i0 = s * SPLIT - t->p0 > 0 ? s * SPLIT - t->p0 : 0;
  for (int i = i0; i < t->n; i++)
    for (int h = 0; h < group; h++) {
      const size_t at = (size_t)(i * group + h) * ST;
      if (s == 0) memcpy(state + at, part + at, ST * sizeof(float));
      else merge_state(state + at, part + at, m->head_dim);
    }
}

static void write_out(const Model *m, const Tile *t, int g, const float *state, float *attn) {
  const int group = m->heads / m->kv_heads, D = m->head_dim, ST = state_floats(m);
  for (int i = 0; i < t->n; i++)
    for (int h = 0; h < group; h++)
      finish_state(state + (size_t)(i * group + h) * ST, D,
                   attn + (size_t)(t->r0 + i) * m->hidden + (g * group + h) * D);
}

/* Attention of every row of a call for layer l. A prompt's rows: a (tile, KV head) a work item
 * through flash_prefill.h. Decode rows: few (tile, KV head) pairs (small-batch decode):
 * every split is a work item, the partials merged after (flash-decoding), so all threads work on
 * one long sequence. Many: a thread takes a (tile, KV head) and walks its splits in order. Both
 * merge the same partials in the same order. */
static void attention(Model *m, const Cache *c, int l, const Tile *tiles, int n_tiles,
                      const int *part_at, int split_items, int prompt, const float *qkv,
                      float *attn) {
  const int NKV = m->kv_heads, group = m->heads / NKV, ST = state_floats(m);
  const size_t per_thread = (size_t)TILE * group * (SPLIT + 2 * ST);
  if (prompt) {
    const int D = m->head_dim, QKV = (m->heads + 2 * NKV) * D;
    const size_t bytes = prompt_scratch_bytes(PROMPT_TILE * group, D);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int k = 0; k < n_tiles; k++)
      for (int g = 0; g < NKV; g++) {
        const Tile *t = &tiles[k];
        const KeyBlocks kv = {c->kb, c->vb, c->table + (size_t)t->slot * c->max_blocks,
                              in_block(m, l, g, 0), c->f16};
        const float *q = qkv + (size_t)t->r0 * QKV + (size_t)g * group * D;
        float *out = attn + (size_t)t->r0 * m->hidden + (size_t)g * group * D;
        void *scratch = (char *)m->prompt_scratch + (size_t)omp_get_thread_num() * bytes;
#ifdef __AMX_BF16__
        if (m->amx) {
          prefill_tile_amx(&kv, D, group, t->n, t->p0, q, QKV, out, m->hidden, scratch);
          continue;
        }
#endif
#ifdef __AVX512BF16__
        if (m->bf16) {
          prefill_tile_bf16(&kv, D, group, t->n, t->p0, q, QKV, out, m->hidden, scratch);
          continue;
        }
#endif
        prefill_tile_fma(&kv, D, group, t->n, t->p0, q, QKV, out, m->hidden, scratch);
      }
    return;
  }
  if (split_items) {
#pragma omp parallel for schedule(dynamic)
    for (int w = 0; w < split_items; w++) {
      /* item w: tile k, KV head g, split s, numbered in that order */
      int k = 0;
      while (part_at[k + 1] <= w) k++;
      const int local = w - part_at[k], S = splits_of(&tiles[k]), g = local / S, s = local % S;
      float *scores = m->attn_scratch + (size_t)omp_get_thread_num() * per_thread;
      attend_split(m, c, l, &tiles[k], g, s, qkv, scores,
                   m->partials + (size_t)w * TILE * group * ST);
    }
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int k = 0; k < n_tiles; k++)
      for (int g = 0; g < NKV; g++) {
        const int S = splits_of(&tiles[k]);
        float *state = m->partials + (size_t)(part_at[k] + g * S) * TILE * group * ST;
        for (int s = 1; s < S; s++)
          merge_split(m, &tiles[k], s, state, state + (size_t)s * TILE * group * ST);
        write_out(m, &tiles[k], g, state, attn);
      }
    return;
  }
#pragma omp parallel for collapse(2) schedule(dynamic)
  for (int k = 0; k < n_tiles; k++)
    for (int g = 0; g < NKV; g++) {
      float *scores = m->attn_scratch + (size_t)omp_get_thread_num() * per_thread;
      float *part = scores + (size_t)TILE * group * SPLIT;
      float *state = part + (size_t)TILE * group * ST;
      for (int s = 0; s < splits_of(&tiles[k]); s++) {
        attend_split(m, c, l, &tiles[k], g, s, qkv, scores, part);
        merge_split(m, &tiles[k], s, state, part);
      }
      write_out(m, &tiles[k], g, state, attn);
    }
}

static void linear(const Model *m, const Linear *lin, Call c, const float *row_scale, float *y,
                   int rows) {
  c.gemm(m->xq, c.M, m->planes, &lin->w, row_scale, y);
  if (lin->bias)
#pragma omp parallel for
    for (int r = 0; r < rows; r++)
      for (int n = 0; n < lin->w.N; n++) y[(size_t)r * lin->w.N + n] += lin->bias[n];
}

/* Tiles of consecutive rows of one sequence (at most TILE), the work items of attention, and
 * where each tile's partial states start when every split is an item (split_items > 0; 0: the
 * calls are many enough to keep every thread busy one (tile, KV head) each). Returns -1 where
 * memory ran out. */
static int plan_attention(Model *m, int rows, const int32_t *slot, const int32_t *pos, int prompt,
                          int *n_tiles, int *split_items) {
  Tile *t = m->tiles;
  int n = 0;
  for (int r = 0; r < rows; r++) {
    if (pos[r] < 0) continue; /* an idle row: no attention */
    if (n && t[n - 1].slot == slot[r] && t[n - 1].p0 + t[n - 1].n == pos[r] &&
        t[n - 1].n < (prompt ? PROMPT_TILE : TILE)) {
      t[n - 1].n++;
      continue;
    }
    t[n++] = (Tile){r, 1, slot[r], pos[r]};
  }
  *n_tiles = n;
  const int NKV = m->kv_heads, group = m->heads / NKV, ST = state_floats(m);
  size_t items = 0;
  int longest = 1;
  for (int k = 0; k < n; k++) {
    m->part_at[k] = (int)items;
    items += (size_t)NKV * splits_of(&t[k]);
    longest = splits_of(&t[k]) > longest ? splits_of(&t[k]) : longest;
  }
  m->part_at[n] = (int)items;
  /* Splits only where (tile, KV head) pairs leave threads idle: at 2 threads over 2 KV heads
   * a split's merge and extra parallel region cost more than they gain
   * (results/long-context.md). */
  *split_items = !prompt && (long)n * NKV < m->threads && longest > 1 ? (int)items : 0;
  if (prompt && !m->prompt_scratch) {
    m->prompt_scratch =
        alloc64((size_t)m->threads * prompt_scratch_bytes(PROMPT_TILE * group, m->head_dim));
    if (!m->prompt_scratch) return -1;
  }
  if (!m->attn_scratch) {
    m->attn_scratch = alloc64((size_t)m->threads * TILE * group * (SPLIT + 2 * ST) * sizeof(float));
    if (!m->attn_scratch) return -1;
  }
  const size_t need = (size_t)*split_items * TILE * group * ST;
  if (need > m->partials_cap) {
    free(m->partials);
    m->partials = alloc64(need * sizeof(float));
    m->partials_cap = m->partials ? need : 0;
    if (!m->partials) return -1;
  }
  return 0;
}

/* `rows` tokens: row r is token ids[r] at position pos[r] of cache slot slot[r], attending to that
 * slot's positions up to its own (rows of one slot come in position order; earlier positions are
 * already cached or in this call). The cache is in blocks (above): `table` [slots, max_blocks]
 * block ids, `k_blocks` / `v_blocks` [n_blocks] their addresses; every block up to a row's
 * position must be there. A row at position -1 is an idle slot's in a decode step: nothing
 * cached or attended, its logits meaningless. `prompt`: the rows are a prompt's (prefill),
 * whose attention goes through flash_prefill.h's blocks; else decode rows (the splits above).
 * Writes logits of the rows `logit_rows` ([n_logits] row indices) to
 * `logits`, which has room for n_logits rounded up to 32 rows of `vocab`.
 * Returns 0; -1 for a position outside the rope table or the cache, or a block missing, -2 for
 * a token id outside the vocabulary, -3 for a logit row outside the call, -4 for a model not
 * completely set or counts out of range, -5 for memory that could not be had (nothing is
 * computed then). */
int ed_forward(Model *m, int rows, const int64_t *ids, const int32_t *slot, const int32_t *pos,
               int n_logits, const int32_t *logit_rows, const int32_t *table, int max_blocks,
               void *const *k_blocks, void *const *v_blocks, int n_blocks, int f16, int slots,
               int prompt, float *logits) {
  const int H = m->hidden, D = m->head_dim, NH = m->heads, NKV = m->kv_heads, I = m->inter;
  const int QKV = (NH + 2 * NKV) * D;
  const Call c = call_for(m, rows), head = call_for(m, n_logits);
  if (!complete(m) || rows < 1 || n_logits < 0 || n_logits > rows || slots < 1 || max_blocks < 1 ||
      n_blocks < 1 || !table || !k_blocks || !v_blocks || !logits)
    return -4;
  for (int r = 0; r < rows; r++) {
    if (ids[r] < 0 || ids[r] >= m->vocab) return -2;
    if (pos[r] == -1) continue; /* an idle slot's row in a decode step */
    if (pos[r] < 0 || pos[r] >= (long)max_blocks * BLOCK || pos[r] >= m->rope_positions ||
        slot[r] < 0 || slot[r] >= slots)
      return -1;
    for (int j = 0; j <= pos[r] / BLOCK; j++) {
      const int32_t id = table[(size_t)slot[r] * max_blocks + j];
      if (id < 0 || id >= n_blocks || !k_blocks[id] || !v_blocks[id]) return -1;
    }
  }
  for (int i = 0; i < n_logits; i++)
    if (logit_rows[i] < 0 || logit_rows[i] >= rows) return -3;
  omp_set_num_threads(m->threads);
  int n_tiles, split_items;
  if (grow_scratch(m, (c.M > head.M ? c.M : head.M) / m->planes) ||
      plan_attention(m, rows, slot, pos, prompt, &n_tiles, &split_items))
    return -5;
  const Cache cache = {k_blocks, v_blocks, table, max_blocks, f16};
  float *h = m->h, *t1 = m->wide1, *t2 = m->wide2, *qkv = m->qkv, *attn = m->attn;
  float *rs = m->row_scale;

#pragma omp parallel for
  for (int r = 0; r < rows; r++) {
    float *dst = h + (size_t)r * H;
    if (m->embed_q) {
      const int8_t *src = m->embed_q + (size_t)ids[r] * H;
      for (int i = 0; i < H; i++) dst[i] = src[i] * m->embed_scale[ids[r]];
    } else if (m->embed_h) {
      const uint16_t *src = m->embed_h + (size_t)ids[r] * H;
      for (int i = 0; i < H; i += 16)
        _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
    } else {
      memcpy(dst, m->embed_f + (size_t)ids[r] * H, H * sizeof(float));
    }
  }
  for (int l = 0; l < m->layers; l++) {
    const Layer *ly = &m->layer[l];
#pragma omp parallel for
    for (int r = 0; r < rows; r++)
      quantize_row(m, h + (size_t)r * H, H, ly->input_norm, attn + (size_t)r * H, act_row(m, r, H),
                   rs + r);
    linear(m, &ly->qkv, c, rs, qkv, rows);
#pragma omp parallel for
    for (int r = 0; r < rows; r++) {
      if (pos[r] < 0) continue;
      float *x = qkv + (size_t)r * QKV;
      const float *cs = m->cos_t + (size_t)pos[r] * D / 2, *sn = m->sin_t + (size_t)pos[r] * D / 2;
      for (int hd = 0; hd < NH + NKV; hd++) rotate(x + hd * D, cs, sn, D / 2);
      char *kb = (char *)block_of(&cache, k_blocks, slot[r], pos[r]);
      char *vb = (char *)block_of(&cache, v_blocks, slot[r], pos[r]);
      for (int g = 0; g < NKV; g++) {
        const size_t at = in_block(m, l, g, pos[r]);
        const float *key = x + (NH + g) * D, *val = x + (NH + NKV + g) * D;
        if (f16) {
          for (int i = 0; i < D; i += 16) {
            _mm256_storeu_si256(
                (__m256i *)((uint16_t *)kb + at + i),
                _mm512_cvtps_ph(_mm512_loadu_ps(key + i), _MM_FROUND_TO_NEAREST_INT));
            _mm256_storeu_si256(
                (__m256i *)((uint16_t *)vb + at + i),
                _mm512_cvtps_ph(_mm512_loadu_ps(val + i), _MM_FROUND_TO_NEAREST_INT));
          }
        } else {
          memcpy((float *)kb + at, key, D * sizeof(float));
          memcpy((float *)vb + at, val, D * sizeof(float));
        }
      }
    }
    attention(m, &cache, l, m->tiles, n_tiles, m->part_at, split_items, prompt, qkv, attn);
    for (int r = 0; r < rows; r++)
      if (pos[r] < 0) /* an idle row reads zeros */
        memset(attn + (size_t)r * H, 0, H * sizeof(float));
#pragma omp parallel for
    for (int r = 0; r < rows; r++)
      quantize_row(m, attn + (size_t)r * H, H, NULL, NULL, act_row(m, r, H), rs + r);
    linear(m, &ly->o, c, rs, t1, rows);
#pragma omp parallel for
    for (int r = 0; r < rows; r++) {
      float *x = h + (size_t)r * H;
      for (int i = 0; i < H; i++) x[i] += t1[(size_t)r * H + i];
      quantize_row(m, x, H, ly->post_norm, attn + (size_t)r * H, act_row(m, r, H), rs + r);
    }
    linear(m, &ly->gate, c, rs, t1, rows);
    linear(m, &ly->up, c, rs, t2, rows);
#pragma omp parallel for
    for (int r = 0; r < rows; r++) {
      float *g = t1 + (size_t)r * I, *u = t2 + (size_t)r * I;
      for (int i = 0; i < I; i++) g[i] = g[i] / (1 + expf(-g[i])) * u[i];
      quantize_row(m, g, I, NULL, NULL, act_row(m, r, I), rs + r);
    }
    linear(m, &ly->down, c, rs, t1, rows);
#pragma omp parallel for
    for (int r = 0; r < rows; r++)
      for (int i = 0; i < H; i++) h[(size_t)r * H + i] += t1[(size_t)r * H + i];
  }
#pragma omp parallel for
  for (int i = 0; i < n_logits; i++)
    quantize_row(m, h + (size_t)logit_rows[i] * H, H, m->final_norm, attn + (size_t)i * H,
                 act_row(m, i, H), rs + i);
  linear(m, &m->head, head, rs, logits, n_logits);
  return 0;
}

/* flash_prefill.h's tile alone, for tests against numpy: keys and values [blocks][KEY_BLOCK][D]
 * float32 (block j holds positions j * KEY_BLOCK ..), q [n][group][D], out the same shape;
 * kernel 0 float32 FMAs, 1 vdpbf16ps (where the CPU has it), 2 AMX tiles (where granted).
 * Returns -1 for shapes the kernel does not take. */
int ed_prompt_tile(const float *q, const float *k, const float *v, int blocks, int n, int p0, int D,
                   int group, int kernel, float *out) {
  if (n < 1 || n > PROMPT_TILE || p0 < 0 || D < 16 || D % 16 || D > MAX_HEAD_DIM || group < 1 ||
      group > MAX_GROUP || blocks < 1 || (p0 + n - 1) / KEY_BLOCK >= blocks || blocks > 4096)
    return -1;
  void *kp[4096], *vp[4096];
  int32_t ids[4096];
  for (int j = 0; j < blocks; j++)
    kp[j] = (void *)(k + (size_t)j * KEY_BLOCK * D),
    vp[j] = (void *)(v + (size_t)j * KEY_BLOCK * D), ids[j] = j;
  void *scratch = alloc64(prompt_scratch_bytes(n * group, D));
  if (!scratch) return -1;
  const KeyBlocks kv = {kp, vp, ids, 0, 0};
  const size_t ld = (size_t)group * D;
  int done = 0;
#ifdef __AMX_BF16__
  if (!done && kernel == 2 && amx_permitted())
    prefill_tile_amx(&kv, D, group, n, p0, q, ld, out, ld, scratch), done = 1;
#endif
#ifdef __AVX512BF16__
  if (!done && kernel >= 1 && bf16_supported())
    prefill_tile_bf16(&kv, D, group, n, p0, q, ld, out, ld, scratch), done = 1;
#endif
  if (!done) prefill_tile_fma(&kv, D, group, n, p0, q, ld, out, ld, scratch);
  free(scratch);
  return 0;
}

/* Decode attention alone (attend_split, the splits merged in order), for tests against numpy:
 * keys and values [blocks][BLOCK][D], float32 or (f16) float16, q [n][group][D] float32 at
 * positions p0 .., out the same shape. Returns -1 for shapes the kernel does not take, -5 where
 * memory ran out. */
int ed_decode_tile(const float *q, const void *k, const void *v, int f16, int blocks, int n, int p0,
                   int D, int group, float *out) {
  if (n < 1 || n > TILE || p0 < 0 || D < 16 || D % 16 || D > MAX_HEAD_DIM || group < 1 ||
      group > MAX_GROUP || blocks < 1 || (p0 + n - 1) / BLOCK >= blocks || blocks > 4096)
    return -1;
  Model m = {.layers = 1, .hidden = group * D, .heads = group, .kv_heads = 1, .head_dim = D};
  const size_t elem = f16 ? 2 : 4, QKV = (size_t)(group + 2) * D, ST = state_floats(&m);
  void *kp[4096], *vp[4096];
  int32_t ids[4096];
  for (int j = 0; j < blocks; j++)
    kp[j] = (char *)k + (size_t)j * BLOCK * D * elem,
    vp[j] = (char *)v + (size_t)j * BLOCK * D * elem, ids[j] = j;
  const Cache cache = {kp, vp, ids, blocks, f16};
  const Tile t = {0, n, 0, p0};
  float *qkv = alloc64((size_t)n * QKV * sizeof(float));
  float *scores = alloc64((size_t)TILE * group * SPLIT * sizeof(float));
  float *state = alloc64((size_t)2 * TILE * group * ST * sizeof(float));
  int rc = qkv && scores && state ? 0 : -5;
  if (!rc) {
    for (int i = 0; i < n; i++)
      memcpy(qkv + i * QKV, q + (size_t)i * group * D, group * D * sizeof(float));
    float *part = state + (size_t)TILE * group * ST;
    for (int s = 0; s < splits_of(&t); s++) {
      attend_split(&m, &cache, 0, &t, 0, s, qkv, scores, part);
      merge_split(&m, &t, s, state, part);
    }
    write_out(&m, &t, 0, state, out);
  }
  free(qkv), free(scores), free(state);
  return rc;
}

/* int8_gemm.h's VNNI (or AVX2) kernel alone, for tests against numpy: y [M, N] = (a - 128) w
 * times each column's scale, a uint8 [M, K], w int8 [K, N] (K % 4 == 0, N % 64 == 0), rows of
 * scale 1. Returns -1 for shapes the kernel does not take, -5 where memory ran out. */
int ed_int8_gemm(const uint8_t *a, int M, const int8_t *w, const float *scale, int K, int N,
                 float *y) {
  if (M < 1 || K < 4 || K % 4 || N < 64 || N % 64) return -1;
  Weights p = pack(w, scale, K, N);
  float *ones = malloc((size_t)M * sizeof(float));
  int rc = p.packed && p.col_sums && p.scale && ones ? 0 : -5;
  if (!rc) {
    for (int r = 0; r < M; r++) ones[r] = 1;
    gemm_vnni(a, M, 1, &p, ones, y);
  }
  free(p.packed), free(p.col_sums), free(p.scale), free(ones);
  return rc;
}
