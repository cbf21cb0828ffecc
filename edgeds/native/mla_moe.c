/* The DeepSeek-V2/V3 decoder of an int8 export (Multi-head Latent Attention + Mixture of
 * Experts) as a few OpenMP loops a layer, for the native MLA backend
 * (edgeds/backends/native_mla.py).
 *
 * The arithmetic is the export's (export/tensors_mla.py, export/onnx_mla_writer.py): each linear
 * layer's input quantized per row to uint8 (zero point 128, scale = peak / 127, rounded half to
 * even), int8 weights with per-channel scales, float32 everywhere else; W_UK and W_UV int8 per
 * head with per-column scales, applied to float activations; the router in float32.
 *
 * - The cache holds MLA's latent: kv_lora_rank normed values + qk_rope_head_dim rotated ones per
 *   token per layer, [layers, slots, capacity, kv_lora_rank + rope] float16 (em_set_cache_half:
 *   half what decode reads at depth) or float32, owned by the caller.
 *   Decode attention is absorbed: W_UK is folded into the query, every head attends over the
 *   latent directly (each cached row read once for all heads), W_UV turns the attended latent
 *   into values. Attention runs over fixed chunks of KV_CHUNK positions, each a task of its
 *   own, and the chunks' partial softmaxes are merged in position order: a row's arithmetic
 *   depends on its length only, never on the thread count or the rest of the batch. Prefill
 *   calls decompress each slot's cached latent into per-head keys and values once and attend
 *   over those (fewer multiply-adds per key at every prompt length measured:
 *   benchmarks/kernels/mla_prefill_crossover.py); a row's path is its call's kind. A prompt
 *   prefilled over several calls may keep what earlier calls decompressed
 *   (em_keep_decompressed), so each call decompresses its own rows only; where the CPU grants
 *   AMX-BF16 tiles the prompt's attention runs on them (em_set_prompt_tiles: keys and values
 *   decompressed into bf16 tile layouts, flash_prefill.h's softmax step).
 * - MoE: the tokens of a call are grouped by expert, so each active expert's weights are read
 *   once per call for all the tokens routed to it; gate and up are computed block by block in
 *   one task with the SiLU between them; each token's activations are quantized once and reused
 *   by every expert it goes to. Work items are (expert, 64 output columns), all experts of a
 *   layer (and the shared expert) in one loop, so no thread waits on a hot expert. Each token
 *   sums its experts' outputs in expert order and the shared expert's last, whatever the batch.
 *
 * The int8 products accumulate in int32 (exact), so the kernel a row goes through never changes
 * its result: greedy outputs do not depend on batch size or composition. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "flash_prefill.h"
#include "int8_gemm.h"
#include "lane_sums.h"
#ifndef __AVX512F__
#include "decode_avx2.h"
#endif

enum { MAX_THREADS = 4096 }; /* decoder.c's: per-thread buffers are sized by the count */
enum { MAX_V_TILES = 256 };  /* v_head_dim the AMX-BF16 prompt tiles take */
enum { KV_CHUNK = 256 };                                        /* positions per attention task */
enum { MAX_EXPERTS = 1024, MAX_GROUPS = 256, MAX_LORA = 4096 }; /* native_mla.py checks these */
enum { ROUTE_SOFTMAX = 0, ROUTE_SOFTMAX_GROUPS = 1, ROUTE_SIGMOID = 2 };
/* em_profile's phases: where a call's time goes (benchmarks/kernels/mla_decode_profile.py). */
enum { P_ATTN_PROJ, P_ATTN, P_O, P_ROUTE, P_EXPERTS, P_DENSE_MLP, P_HEAD, P_REST, P_COUNT };

typedef struct {
  Weights gate, up, down;
} Mlp;

typedef struct {
  Weights q_a, q, kv_a, o; /* q_a.K == 0: no q_lora */
  float *input_norm, *post_norm, *q_a_norm, *kv_a_norm;
  int8_t *w_uk, *w_uv;        /* [heads][nope][lora], [heads][lora][v]; the caller's */
  int8_t *w_ukt;              /* W_UK per head as [lora][nope]: prefill's decompressed keys */
  float *uk_scale, *uv_scale; /* [heads][lora], [heads][v]; the caller's */
  Mlp mlp;                    /* a dense layer's */
  int moe;
  float *router, *router_bias; /* [hidden][experts] float32; bias or NULL; the caller's */
  Mlp *experts;
  Mlp shared; /* shared.gate.K == 0: none */
} MLayer;

/* dims, in this order (the caller's list) */
enum {
  D_LAYERS,
  D_HIDDEN,
  D_HEADS,
  D_Q_LORA,
  D_KV_LORA,
  D_NOPE,
  D_ROPE,
  D_V,
  D_INTER,
  D_MOE_INTER,
  D_EXPERTS,
  D_SHARED_INTER,
  D_TOPK,
  D_ROUTING,
  D_GROUPS,
  D_TOPK_GROUPS,
  D_NORM_TOPK,
  D_VOCAB,
  D_COUNT
};

typedef struct {
  const Weights *w,
      *up;          /* up: gate/up fused with SiLU between them (y = silu(a w) * (a up)), or NULL */
  const uint8_t *a; /* row i: a + (idx ? idx[i] : i) * lda, its scale rs[idx ? idx[i] : i] */
  int lda;
  const int32_t *idx;
  const float *rs;
  float *y; /* row i: y + i * ldy */
  int ldy, rows;
  const uint8_t *tiles; /* AMX: the rows gathered in order, padded to 16 (run_jobs), or NULL */
  size_t lo; /* two activation planes: row i's remainder plane is at its row + lo; 0: one plane */
} Job;

typedef struct {
  int job, nb0, nb1; /* sixteen-column blocks [nb0, nb1) of job's weights */
} Item;

typedef struct {
  size_t slot_row; /* the slot's first cached row: slot * capacity */
  int t0, last;    /* the block's first position, its segment's last (rows past it repeat it) */
  float *dst;      /* where its decompressed block goes, for the first head of the pass */
  size_t hstride;  /* floats from one head's block to the next head's */
} DecSource;

/* One prompt's decompressed keys and values kept between its prefill calls
 * (em_keep_decompressed), for its first `layers` layers: [layers][heads][blocks][dec_block];
 * done[l]: leading blocks of layer l that hold their final rows (full blocks already
 * decompressed), so a call decompresses only the rows past them instead of the whole prefix
 * again. The layers past `layers` decompress per call, as a prompt not kept does. */
typedef struct {
  int slot, blocks, first, layers; /* layers [first, first + layers) */
  size_t cap;                      /* floats buf holds */
  int *done;
  float *buf;
} Kept;

typedef struct {
  float *keys;    /* head 0's first block (kept) or the pass's first head's (in dec) */
  size_t hstride; /* floats from a head's blocks to the next head's */
  int kept;
} SlotKeys;

typedef struct {
  int d[D_COUNT];
  float eps, softmax_scale, routed_scaling;
  int threads, rope_positions;
  int amx; /* the process holds the AMX tiles: jobs of AMX_MIN_ROWS rows or more use them */
  int half; /* the latent cache holds float16 (em_set_cache_half), else float32 */
  int prompt_amx; /* prompt attention on AMX-BF16 tiles (em_set_prompt_tiles), else FMAs */
  int decode_kernel; /* decode attention's (em_set_decode_kernel): latent_tiles.h's DECODE_ */
  uint32_t *qtiles; /* the decode call's queries in bf16 pairs, latent_query_bytes a row */
  char *tile_scratch; /* tile_bytes a thread, for attend_chunk_bf16 */
  size_t tile_bytes;
  double seconds[P_COUNT], stamp; /* em_profile's */
  MLayer *layer;
  Weights head;
  float *final_norm, *cos_t, *sin_t; /* cos_t, sin_t: the caller's */
  const int8_t *embed_q;
  const float *embed_scale, *embed_f;
  const uint16_t *embed_h; /* a float16 table */
  /* scratch, grown to the largest call */
  int rows_cap, chunks_cap, items_cap;
  size_t tiles_cap;
  uint8_t *tiles;
  float *h, *xn, *proj, *kv, *query, *part, *scores, *vals, *out, *rs, *logit_e, *wts, *act, *ye,
      *ars;
  uint8_t *xq, *actq;
  /* Activations as two int8 planes (em_set_activations; int8_gemm.h's quantize_remainder and
   * combine_planes). The remainder planes lie xq_lo / actq_lo bytes after their rows; 0 while
   * there is one plane. */
  int planes, plane_sites;
  size_t xq_lo, actq_lo;
  int32_t *sel, *assign, *tok_of;
  Item *items;
  /* prefill: decompressed keys and values [heads of a pass][blocks of the pass] (dec_block),
   * where each block's rows are cached (src), per-slot bookkeeping (seg_base), the row tiles
   * (tile_row, tile_len: rows_cap each), ones for a matvec's scale */
  size_t dec_cap, src_cap, seg_cap;
  float *dec, *ones;
  DecSource *src;
  int32_t *seg_base, *tile_row, *tile_len, *task_tile;
  SlotKeys *slot_keys; /* per slot of a prefill call: where its decompressed blocks lie */
  Kept *kept;
  int n_kept, kept_cap;
} MlaModel;

static void *alloc64(size_t bytes) { return aligned_alloc(64, (bytes + 63) / 64 * 64); }

static float *copy_floats(const float *src, size_t n) {
  if (!src) return NULL;
  float *dst = malloc(n * sizeof(float));
  memcpy(dst, src, n * sizeof(float));
  return dst;
}

MlaModel *em_new(const int *dims, float eps, float softmax_scale, float routed_scaling, int threads,
                 int use_amx) {
  if (threads < 1 || threads > MAX_THREADS || dims[D_LAYERS] < 1) return NULL;
  MlaModel *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  memcpy(m->d, dims, sizeof m->d);
  m->eps = eps, m->softmax_scale = softmax_scale, m->routed_scaling = routed_scaling,
  m->threads = threads;
  m->layer = calloc(dims[D_LAYERS], sizeof(MLayer));
  m->planes = 1, m->plane_sites = ~0;
#ifdef __AMX_INT8__
  m->amx = use_amx && amx_permitted();
#endif
  return m;
}

int em_uses_amx(const MlaModel *m) { return m->amx; }

/* planes 1: activations int8 per row (the ONNX graph's MatMulIntegerToFloat); 2: a second
 * plane for the rounding's remainder (manifest quantization.activations "int16 per row").
 * Before the first em_forward. Returns 0, or -1 for another count. */
int em_set_activations(MlaModel *m, int planes) {
  if (planes != 1 && planes != 2) return -1;
  m->planes = planes;
  m->rows_cap = 0; /* the scratch rows are sized by the planes */
  return 0;
}

static int prompt_tiles_fit(const int *d) {
  return d[D_V] % 16 == 0 && d[D_V] <= MAX_V_TILES && d[D_NOPE] + d[D_ROPE] <= 256;
}

/* want 1: a prompt's attention on AMX-BF16 tiles where granted (widths: v a multiple of 16 up to
 * 256, nope + rope <= 256), 0: float32 FMAs. Before the first em_forward. Returns what it took. */
int em_set_prompt_tiles(MlaModel *m, int want) {
  m->prompt_amx = 0;
#ifdef __AMX_BF16__
  m->prompt_amx = want && prompt_tiles_fit(m->d) && amx_permitted();
#else
  (void)want;
#endif
  return m->prompt_amx;
}

/* The cache em_forward is given holds float16 (half: 1) or float32 (0). */
void em_set_cache_half(MlaModel *m, int half) { m->half = half != 0; }

/* pack() of int8_gemm.h where N % 64 == 0 (vectorized, parallel); else one column at a time, into
 * the same layout: [N/16][K/4][16][4]. */
static Weights pack_any(const int8_t *w, const float *scale, int K, int N) {
  if (N % 64 == 0) return pack(w, scale, K, N);
  Weights p = {K, N, alloc64((size_t)K * N), alloc64((size_t)N * 4), alloc64((size_t)N * 4)};
  for (int n = 0; n < N; n++) {
    int32_t sum = 0;
    for (int k = 0; k < K; k++) {
      int8_t v = w[(size_t)k * N + n];
      p.packed[(((size_t)(n / 16) * (K / 4) + k / 4) * 16 + n % 16) * 4 + k % 4] = v;
      sum += v;
    }
    p.col_sums[n] = sum;
    p.scale[n] = scale[n];
  }
  return p;
}

static void free_weights(Weights *w) {
  if (!w->borrowed) free(w->packed), free(w->scale), free(w->col_sums);
  w->packed = NULL, w->col_sums = NULL, w->scale = NULL, w->borrowed = 0;
}

static void free_mlp(Mlp *p) {
  free_weights(&p->gate), free_weights(&p->up), free_weights(&p->down);
}

/* which: 0 q_a, 1 q (q_b with q_lora), 2 kv_a, 3 o, 4-6 the dense MLP's gate/up/down, 7-9 the
 * shared expert's; layer -1: the LM head. */
static Weights *linear_slot(MlaModel *m, int layer, int which) {
  if (layer < 0) return &m->head;
  MLayer *ly = &m->layer[layer];
  Weights *slot[] = {&ly->q_a,       &ly->q,          &ly->kv_a,     &ly->o,
                     &ly->mlp.gate,  &ly->mlp.up,     &ly->mlp.down, &ly->shared.gate,
                     &ly->shared.up, &ly->shared.down};
  return slot[which];
}

static Weights *expert_slot(MlaModel *m, int layer, int e, int which) {
  MLayer *ly = &m->layer[layer];
  if (!ly->experts) ly->experts = calloc(m->d[D_EXPERTS], sizeof(Mlp));
  return &(&ly->experts[e].gate)[which];
}

/* Weights exported in the GEMM's own layout: packed int8 [N/16][K/4][16][4], scale [N] and each
 * column's sum col_sums [N] in the caller's memory (the artifact's map). copy 0: read where they
 * lie, so they stay file pages, shared and evictable, and load reads none of them (the memory
 * must outlive the model); copy 1: copied into the process's memory. */
static Weights blocked_weights(const int8_t *packed, const float *scale, const int32_t *col_sums,
                               int K, int N, int copy) {
  Weights p = {K, N, (int8_t *)packed, (int32_t *)col_sums, (float *)scale, !copy};
  if (copy) {
    p.packed = alloc64((size_t)K * N), p.scale = alloc64((size_t)N * 4);
    p.col_sums = alloc64((size_t)N * 4);
    memcpy(p.packed, packed, (size_t)K * N);
    memcpy(p.scale, scale, (size_t)N * 4);
    memcpy(p.col_sums, col_sums, (size_t)N * 4);
  }
  return p;
}

/* Linear `which` (linear_slot) from int8 [K, N] row-major w, packed here. */
void em_set_linear(MlaModel *m, int layer, int which, const int8_t *w, const float *scale, int K,
                   int N) {
  omp_set_num_threads(m->threads);
  *linear_slot(m, layer, which) = pack_any(w, scale, K, N);
}

void em_set_linear_blocked(MlaModel *m, int layer, int which, const int8_t *packed,
                           const float *scale, const int32_t *col_sums, int K, int N, int copy) {
  *linear_slot(m, layer, which) = blocked_weights(packed, scale, col_sums, K, N, copy);
}

/* which: 0 gate, 1 up, 2 down of routed expert e. */
void em_set_expert(MlaModel *m, int layer, int e, int which, const int8_t *w, const float *scale,
                   int K, int N) {
  omp_set_num_threads(m->threads);
  *expert_slot(m, layer, e, which) = pack_any(w, scale, K, N);
}

void em_set_expert_blocked(MlaModel *m, int layer, int e, int which, const int8_t *packed,
                           const float *scale, const int32_t *col_sums, int K, int N, int copy) {
  *expert_slot(m, layer, e, which) = blocked_weights(packed, scale, col_sums, K, N, copy);
}

/* router [hidden][experts] float32; bias [experts] or NULL. Here and in em_set_absorb and
 * em_set_rope the arrays are the caller's (the artifact's map), read where they lie for the
 * model's life: copies would be anonymous memory beside the file pages the map already has. */
void em_set_router(MlaModel *m, int layer, const float *router, const float *bias) {
  MLayer *ly = &m->layer[layer];
  ly->moe = 1;
  ly->router = (float *)router, ly->router_bias = (float *)bias;
}

/* w_uk int8 [heads][nope][lora] with scales [heads][lora]; w_uv [heads][lora][v], [heads][v]. */
void em_set_absorb(MlaModel *m, int layer, const int8_t *w_uk, const float *uk_scale,
                   const int8_t *w_uv, const float *uv_scale) {
  MLayer *ly = &m->layer[layer];
  const size_t H = m->d[D_HEADS], L = m->d[D_KV_LORA], dn = m->d[D_NOPE], dv = m->d[D_V];
  ly->w_uk = (int8_t *)w_uk, ly->w_uv = (int8_t *)w_uv;
  ly->w_ukt = malloc(H * dn * L);
  for (size_t h = 0; h < H; h++)
    for (size_t i = 0; i < dn; i++)
      for (size_t l = 0; l < L; l++) ly->w_ukt[(h * L + l) * dn + i] = w_uk[(h * dn + i) * L + l];
  if (!m->ones) {
    const size_t n = dn > dv ? dn : dv;
    m->ones = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) m->ones[i] = 1.0f;
  }
  ly->uk_scale = (float *)uk_scale, ly->uv_scale = (float *)uv_scale;
}

/* layer -1: input_norm is the final norm. */
void em_set_norms(MlaModel *m, int layer, const float *input_norm, const float *post_norm,
                  const float *q_a_norm, const float *kv_a_norm) {
  const int hidden = m->d[D_HIDDEN];
  if (layer < 0) {
    m->final_norm = copy_floats(input_norm, hidden);
    return;
  }
  MLayer *ly = &m->layer[layer];
  ly->input_norm = copy_floats(input_norm, hidden), ly->post_norm = copy_floats(post_norm, hidden);
  ly->q_a_norm = copy_floats(q_a_norm, m->d[D_Q_LORA]),
  ly->kv_a_norm = copy_floats(kv_a_norm, m->d[D_KV_LORA]);
}

void em_set_embedding(MlaModel *m, const int8_t *q, const float *row_scale, const float *f) {
  m->embed_q = q, m->embed_scale = row_scale, m->embed_f = f, m->embed_h = NULL;
}

/* A float16 table [vocab][hidden] (export --embedding float16), read in place. */
void em_set_embedding_f16(MlaModel *m, const uint16_t *h) {
  m->embed_q = NULL, m->embed_scale = NULL, m->embed_f = NULL, m->embed_h = h;
}

/* cos and sin: [positions, rope / 2], yarn's amplitude included (export/rope.py). */
void em_set_rope(MlaModel *m, const float *cos_t, const float *sin_t, int positions) {
  m->rope_positions = positions;
  m->cos_t = (float *)cos_t, m->sin_t = (float *)sin_t;
}

/* Every decompressed key and value freed, the kept prompts' and the prefill passes' own buffer
 * (the prompts are prefilled): up to DEC_BUDGET of a batch of prompts would otherwise stay
 * resident through later decode steps and prefills, and a long prompt's peak memory on top. */
void em_drop_decompressed(MlaModel *m) {
  for (int i = 0; i < m->n_kept; i++) free(m->kept[i].buf), free(m->kept[i].done);
  m->n_kept = 0;
  free(m->dec), m->dec = NULL, m->dec_cap = 0;
}

static inline size_t dec_units(const MlaModel *m);
static inline int dec_keys(const MlaModel *m);

/* Bytes em_keep_decompressed takes for `layers` layers of a prompt of `rows` positions. */
size_t em_kept_bytes(const MlaModel *m, int rows, int layers) {
  const int bk = dec_keys(m);
  return (size_t)layers * m->d[D_HEADS] * ((rows + bk - 1) / bk) * dec_units(m) * 4;
}

/* Slot `slot`'s next prompt, of up to `rows` positions, keeps its decompressed keys and values
 * of layers [first, first + layers) between its prefill calls until em_drop_decompressed:
 * layers x heads x rows x (nope + rope + v) floats. A slot kept again starts empty (in the
 * same memory where that holds it: a prompt prefilled layer by layer keeps each layer in
 * turn). Returns 0, or -1 where that memory is not there or the layers are out of range. */
int em_keep_decompressed(MlaModel *m, int slot, int rows, int first, int layers) {
  const int *d = m->d;
  if (first < 0 || layers < 1 || first + layers > d[D_LAYERS] || rows < 1) return -1;
  const size_t floats = em_kept_bytes(m, rows, layers) / 4;
  Kept *k = NULL;
  for (int i = 0; i < m->n_kept; i++)
    if (m->kept[i].slot == slot) k = &m->kept[i];
  if (k && k->cap >= floats) {
    k->blocks = (rows + dec_keys(m) - 1) / dec_keys(m), k->first = first, k->layers = layers;
    memset(k->done, 0, d[D_LAYERS] * sizeof(int));
    return 0;
  }
  if (k) free(k->buf), free(k->done);
  if (!k) {
    if (m->n_kept == m->kept_cap) {
      const int cap = m->kept_cap ? 2 * m->kept_cap : 8;
      Kept *grown = realloc(m->kept, (size_t)cap * sizeof(Kept));
      if (!grown) return -1;
      m->kept = grown, m->kept_cap = cap;
    }
    k = &m->kept[m->n_kept++];
  }
  k->slot = slot, k->blocks = (rows + dec_keys(m) - 1) / dec_keys(m), k->first = first,
  k->layers = layers, k->cap = floats;
  k->buf = alloc64(floats * 4);
  k->done = calloc(d[D_LAYERS], sizeof(int));
  if (!k->buf || !k->done) {
    free(k->buf), free(k->done);
    *k = m->kept[--m->n_kept];
    return -1;
  }
  return 0;
}

void em_free(MlaModel *m) {
  for (int l = 0; l < m->d[D_LAYERS]; l++) {
    MLayer *ly = &m->layer[l];
    free_weights(&ly->q_a), free_weights(&ly->q), free_weights(&ly->kv_a), free_weights(&ly->o);
    free(ly->input_norm), free(ly->post_norm), free(ly->q_a_norm), free(ly->kv_a_norm);
    free(ly->w_ukt);
    free_mlp(&ly->mlp), free_mlp(&ly->shared);
    if (ly->experts)
      for (int e = 0; e < m->d[D_EXPERTS]; e++) free_mlp(&ly->experts[e]);
    free(ly->experts);
  }
  free_weights(&m->head);
  free(m->layer), free(m->final_norm);
  float *f[] = {m->h,   m->xn, m->proj,    m->kv,  m->query, m->part, m->scores, m->vals,
                m->out, m->rs, m->logit_e, m->wts, m->act,   m->ye,   m->ars};
  for (size_t i = 0; i < sizeof f / sizeof *f; i++) free(f[i]);
  free(m->xq), free(m->actq), free(m->sel), free(m->assign), free(m->tok_of), free(m->items);
  free(m->qtiles), free(m->tile_scratch);
  free(m->tiles), free(m->dec), free(m->ones), free(m->src), free(m->seg_base),
      free(m->tile_row), free(m->tile_len), free(m->slot_keys);
  em_drop_decompressed(m);
  free(m->kept);
  free(m);
}

/* ---- kernels ---- */

/* `rows` (1-4) rows (pointers ap) against `nblk` (1-4) sixteen-column blocks at b: int32 sums. */
static inline __attribute__((always_inline)) void micro(const uint8_t *const *ap, int K,
                                                        const int8_t *b, int rows, int nblk,
                                                        int32_t out[4][64]) {
#ifndef __AVX512F__
  dot_any_avx2(ap, K, b, (size_t)(K / 4) * 64, rows, nblk, out);
#else
  __m512i acc[4][4];
  const size_t stride = (size_t)(K / 4) * 64;
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < nblk; j++) acc[r][j] = _mm512_setzero_si512();
  for (int k4 = 0; k4 < K / 4; k4++) {
    __m512i bj[4];
    for (int j = 0; j < nblk; j++) bj[j] = _mm512_load_si512(b + j * stride + (size_t)k4 * 64);
    for (int r = 0; r < rows; r++) {
      __m512i ar = _mm512_set1_epi32(*(const int32_t *)(ap[r] + 4 * k4));
      for (int j = 0; j < nblk; j++) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], ar, bj[j]);
    }
  }
  for (int r = 0; r < rows; r++)
    for (int j = 0; j < nblk; j++) _mm512_store_si512(out[r] + 16 * j, acc[r][j]);
#endif
}

#define MICRO_CASE(R, B)        \
  case (R) * 8 + (B):           \
    micro(ap, K, b, R, B, out); \
    break;

static void micro_any(const uint8_t *const *ap, int K, const int8_t *b, int rows, int nblk,
                      int32_t out[4][64]) {
  switch (rows * 8 + nblk) {
    MICRO_CASE(1, 1)
    MICRO_CASE(1, 2)
    MICRO_CASE(1, 3)
    MICRO_CASE(1, 4)
    MICRO_CASE(2, 1) MICRO_CASE(2, 2) MICRO_CASE(2, 3) MICRO_CASE(2, 4) MICRO_CASE(3, 1)
        MICRO_CASE(3, 2) MICRO_CASE(3, 3) MICRO_CASE(3, 4) MICRO_CASE(4, 1) MICRO_CASE(4, 2)
            MICRO_CASE(4, 3) MICRO_CASE(4, 4)
  }
}

/* int32 sums of 16 columns starting at column n -> floats, as int8_gemm.h's finish(). Not
 * inlined, nor silu_mul: one copy of the float arithmetic, which -ffast-math would otherwise
 * compile differently in each kernel variant (vectorized expf is not scalar expf), so that a
 * row's result never depends on how its columns were cut into work items. */
static __attribute__((noinline)) void to_float(const int32_t *acc, const Weights *w, int n,
                                               float row_scale, float *dst) {
  __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(acc), zero_fix(w, n)));
  _mm512_storeu_ps(dst, _mm512_mul_ps(v, _mm512_mul_ps(_mm512_loadu_ps(w->scale + n),
                                                       _mm512_set1_ps(row_scale))));
}

/* The two planes' sums of 16 columns (hi, lo: the remainder plane's) -> floats. */
static __attribute__((noinline)) void to_float2(const int32_t *hi, const int32_t *lo,
                                                const Weights *w, int n, float row_scale,
                                                float *dst) {
  const __m512 v = combine_planes(_mm512_load_si512(hi), _mm512_load_si512(lo), zero_fix(w, n));
  _mm512_storeu_ps(dst, _mm512_mul_ps(v, _mm512_mul_ps(_mm512_loadu_ps(w->scale + n),
                                                       _mm512_set1_ps(row_scale))));
}

static __attribute__((noinline)) void silu_mul(const float *g, const float *u, float *dst) {
  for (int i = 0; i < 16; i++) dst[i] = g[i] / (1 + expf(-g[i])) * u[i];
}

/* One row's sums of 16 columns at acc (its remainder plane's ld further where there are two)
 * -> floats. */
static inline void sums_to_float(const Job *j, const Weights *w, const int32_t *acc, int ld,
                                 int n, float rs, float *dst) {
  if (j->lo)
    to_float2(acc, acc + ld, w, n, rs, dst);
  else
    to_float(acc, w, n, rs, dst);
}

/* Rows [r0, r0 + rows) of the job: their int32 sums for blocks [nb, nb + nblk) (out) -> floats,
 * through SiLU with up's sums (up) where the job is fused. Row r's sums are at out + r * ld,
 * or with two planes its planes' at out + 2r * ld and the next ld. */
static void epilogue(const Job *j, int r0, int rows, int nb, int nblk, const int32_t *out,
                     const int32_t *up, int ld) {
  const int per = j->lo ? 2 : 1;
  for (int r = 0; r < rows; r++) {
    const int src = j->idx ? j->idx[r0 + r] : r0 + r;
    const float rs = j->rs[src];
    float *y = j->y + (size_t)(r0 + r) * j->ldy;
    for (int b = 0; b < nblk; b++) {
      const int n = 16 * (nb + b);
      const size_t at = (size_t)r * per * ld + 16 * b;
      if (!up) {
        sums_to_float(j, j->w, out + at, ld, n, rs, y + n);
        continue;
      }
      float g[16], u[16];
      sums_to_float(j, j->w, out + at, ld, n, rs, g);
      sums_to_float(j, j->up, up + at, ld, n, rs, u);
      silu_mul(g, u, y + n);
    }
  }
}

enum { AMX_MIN_ROWS = 16 }; /* fewer rows: VNNI, which reads each weight once per four rows */

#ifdef __AMX_INT8__
/* 16 gathered rows (a, stride K) against nblk (1-4) blocks at b: int32 sums [16][64] into out.
 * One A tile (4) per 64 K, a B tile per block (5-7, 5 again for the fourth), accumulators 0-3;
 * the packed layout is the B tile's: 16 rows of four K values by 16 columns, 64 bytes a row. */
static void amx_rows(const uint8_t *a, int K, const int8_t *b, int nblk, int32_t *out) {
  const size_t stride = (size_t)(K / 4) * 64;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int k = 0; k < K; k += 64) {
    _tile_loadd(4, a + k, K);
    _tile_loadd(5, b + (size_t)k * 16, 64);
    _tile_dpbusd(0, 4, 5);
    if (nblk > 1) {
      _tile_loadd(6, b + stride + (size_t)k * 16, 64);
      _tile_dpbusd(1, 4, 6);
    }
    if (nblk > 2) {
      _tile_loadd(7, b + 2 * stride + (size_t)k * 16, 64);
      _tile_dpbusd(2, 4, 7);
    }
    if (nblk > 3) {
      _tile_loadd(5, b + 3 * stride + (size_t)k * 16, 64);
      _tile_dpbusd(3, 4, 5);
    }
  }
  _tile_stored(0, out, 256);
  if (nblk > 1) _tile_stored(1, out + 16, 256);
  if (nblk > 2) _tile_stored(2, out + 32, 256);
  if (nblk > 3) _tile_stored(3, out + 48, 256);
}

/* An item on AMX tiles: 16 rows at a time; the same epilogue as the VNNI path's, and integer
 * sums are exact, so a row's result does not depend on which kernel its batch took. */
static void run_item_amx(const Job *j, int nb0, int nb1) {
  const int K = j->w->K;
  const size_t bstride = (size_t)(K / 4) * 64;
  const int8_t *wb = j->w->packed + nb0 * bstride,
               *ub = j->up ? j->up->packed + nb0 * bstride : NULL;
  int32_t out[16 * 64] __attribute__((aligned(64))), up[16 * 64] __attribute__((aligned(64)));
  const int per = j->lo ? 2 : 1, step = 16 / per; /* rows a tile holds: 16, or 8 two planes */
  for (int r0 = 0; r0 < j->rows; r0 += step) {
    const int rows = j->rows - r0 < step ? j->rows - r0 : step;
    const uint8_t *a = j->tiles + (size_t)r0 * per * K;
    for (int nb = nb0; nb < nb1; nb += 4) {
      const int nblk = nb1 - nb < 4 ? nb1 - nb : 4;
      amx_rows(a, K, wb + (nb - nb0) * bstride, nblk, out);
      if (j->up) amx_rows(a, K, ub + (nb - nb0) * bstride, nblk, up);
      epilogue(j, r0, rows, nb, nblk, out, j->up ? up : NULL, 64);
    }
  }
}

static void tiles_on(void) {
  TileConfig cfg = {0};
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
}
#endif

/* One item: every row of the job against blocks [nb0, nb1), four rows and up to four blocks at a
 * time (the weights of the item stay in L2 while the rows go by). */
static void run_item(const Job *j, int nb0, int nb1) {
  const int K = j->w->K;
  const size_t bstride = (size_t)(K / 4) * 64;
  const int8_t *wb = j->w->packed + nb0 * bstride,
               *ub = j->up ? j->up->packed + nb0 * bstride : NULL;
  /* Four rows of A a micro kernel: four rows, or two rows' two planes each. */
  const int per = j->lo ? 2 : 1, step = 4 / per;
  for (int r0 = 0; r0 < j->rows; r0 += step) {
    const int rows = j->rows - r0 < step ? j->rows - r0 : step;
    const uint8_t *ap[4];
    for (int r = 0; r < rows; r++) {
      ap[per * r] = j->a + (size_t)(j->idx ? j->idx[r0 + r] : r0 + r) * j->lda;
      if (j->lo) ap[per * r + 1] = ap[per * r] + j->lo;
    }
    for (int nb = nb0; nb < nb1; nb += 4) {
      const int nblk = nb1 - nb < 4 ? nb1 - nb : 4;
      int32_t out[4][64] __attribute__((aligned(64))), up[4][64] __attribute__((aligned(64)));
      micro_any(ap, K, wb + (nb - nb0) * bstride, per * rows, nblk, out);
      if (j->up) micro_any(ap, K, ub + (nb - nb0) * bstride, per * rows, nblk, up);
      epilogue(j, r0, rows, nb, nblk, out[0], j->up ? up[0] : NULL, 64);
    }
  }
}

static void grow_items(MlaModel *m, int n) {
  if (n > m->items_cap) {
    free(m->items);
    m->items = malloc((size_t)n * sizeof(Item));
    m->items_cap = n;
  }
}

/* Every job's output columns cut into items of 64 (16 where that leaves threads without work),
 * all in one parallel loop. */
static void run_jobs(MlaModel *m, Job *jobs, int n_jobs) {
  int blocks = 0, amx = 0;
  (void)amx; /* a build without AMX */
#ifdef __AMX_INT8__
  /* Jobs of enough rows (and K a multiple of the tile's 64) get their rows gathered in order,
   * padded to 16, for the A tiles; padded rows are computed and dropped. */
  /* Two planes: a row's two A rows gathered one after the other. */
  size_t need = 0;
  for (int j = 0; j < n_jobs; j++)
    if (m->amx && jobs[j].rows >= AMX_MIN_ROWS && jobs[j].w->K % 64 == 0)
      need += (size_t)(jobs[j].rows * (jobs[j].lo ? 2 : 1) + 15) / 16 * 16 * jobs[j].w->K;
  if (need > m->tiles_cap) {
    free(m->tiles);
    m->tiles = alloc64(need);
    memset(m->tiles, 128, need);
    m->tiles_cap = need;
  }
  need = 0;
  for (int j = 0; j < n_jobs; j++) {
    jobs[j].tiles = NULL;
    if (!(m->amx && jobs[j].rows >= AMX_MIN_ROWS && jobs[j].w->K % 64 == 0)) continue;
    jobs[j].tiles = m->tiles + need;
    need += (size_t)(jobs[j].rows * (jobs[j].lo ? 2 : 1) + 15) / 16 * 16 * jobs[j].w->K;
    amx = 1;
  }
#pragma omp parallel for schedule(dynamic, 1) if (amx)
  for (int j = 0; j < n_jobs; j++) {
    const int per = jobs[j].lo ? 2 : 1, K = jobs[j].w->K;
    for (int r = 0; jobs[j].tiles && r < jobs[j].rows; r++)
      for (int p = 0; p < per; p++)
        memcpy((uint8_t *)jobs[j].tiles + (size_t)(per * r + p) * K,
               jobs[j].a + (size_t)(jobs[j].idx ? jobs[j].idx[r] : r) * jobs[j].lda +
                   p * jobs[j].lo,
               K);
  }
#endif
  for (int j = 0; j < n_jobs; j++) blocks += jobs[j].rows ? jobs[j].w->N / 16 : 0;
  const int per = blocks >= 16 * m->threads ? 4 : 1;
  grow_items(m, blocks);
  int n = 0;
  for (int j = 0; j < n_jobs; j++) {
    if (!jobs[j].rows) continue;
    for (int nb = 0; nb < jobs[j].w->N / 16; nb += per)
      m->items[n++] = (Item){j, nb, nb + per < jobs[j].w->N / 16 ? nb + per : jobs[j].w->N / 16};
  }
  const Item *items = m->items;
#pragma omp parallel
  {
#ifdef __AMX_INT8__
    if (amx) tiles_on();
#endif
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) {
      const Job *j = &jobs[items[i].job];
#ifdef __AMX_INT8__
      if (j->tiles) {
        run_item_amx(j, items[i].nb0, items[i].nb1);
        continue;
      }
#endif
      run_item(j, items[i].nb0, items[i].nb1);
    }
#ifdef __AMX_INT8__
    if (amx) _tile_release();
#endif
  }
}

/* y[n] = scale[n] * sum_k x[k] w[k][n]: float activations against int8 columns (W_UK, W_UV).
 * N % 16 == 0. */
static void int8_matvec(const float *x, int K, const int8_t *w, int N, const float *scale,
                        float *y) {
  for (int n0 = 0; n0 < N; n0 += 64) {
    const int chunks = N - n0 < 64 ? (N - n0) / 16 : 4;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                     _mm512_setzero_ps()};
    for (int k = 0; k < K; k++) {
      __m512 xk = _mm512_set1_ps(x[k]);
      const int8_t *row = w + (size_t)k * N + n0;
      for (int c = 0; c < chunks; c++)
        acc[c] = _mm512_fmadd_ps(xk,
                                 _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                     _mm_loadu_si128((const __m128i *)(row + 16 * c)))),
                                 acc[c]);
    }
    for (int c = 0; c < chunks; c++)
      _mm512_storeu_ps(y + n0 + 16 * c,
                       _mm512_mul_ps(acc[c], _mm512_loadu_ps(scale + n0 + 16 * c)));
  }
}

/* RMSNorm with weights g into `normed` (if g), then a uint8 row with zero point 128 and its scale;
 * with lo, the rounding's remainder as a second such row (int8_gemm.h's two planes). */
static void quantize_row(float eps, const float *x, int n, const float *g, float *normed,
                         uint8_t *q, float *scale, uint8_t *lo) {
  const float *src = x;
  if (g) {
    float ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) normed[i] = x[i] * r * g[i];
    src = normed;
  }
  float peak = 0;
  for (int i = 0; i < n; i++) peak = fmaxf(peak, fabsf(src[i]));
  float s = peak / 127;
  /* A row of zeros: scale 0, and its products come out 0 whatever q holds. */
  for (int i = 0; i < n; i++) q[i] = (uint8_t)((int)nearbyintf(s > 0 ? src[i] / s : 0) + 128);
  if (lo) quantize_remainder(src, n, s, q, lo);
  *scale = s;
}

/* Where the remainder plane of quantized row q goes: lo bytes on, or nowhere (one plane). */
static inline uint8_t *lo_plane(uint8_t *q, size_t lo) { return lo ? q + lo : NULL; }

/* Which matmul inputs take the second plane where em_set_activations gave two (default all):
 * a bit each, for measuring where int8 rounding costs quality (benchmarks/quality/
 * plane_sites.py); a site without it rounds as one plane does, bit for bit. */
enum { S_ATTN_IN = 1, S_Q_B = 2, S_O = 4, S_MLP_IN = 8, S_DOWN = 16, S_HEAD = 32 };
static inline size_t lo_at(const MlaModel *m, int site, size_t lo) {
  return m->plane_sites & site ? lo : 0;
}
void em_set_plane_sites(MlaModel *m, int sites) { m->plane_sites = sites; }

static void rms_norm(float eps, float *x, int n, const float *g) {
  float ss = 0;
  for (int i = 0; i < n; i++) ss += x[i] * x[i];
  float r = 1.0f / sqrtf(ss / n + eps);
  for (int i = 0; i < n; i++) x[i] = x[i] * r * g[i];
}

static void rotate(float *x, const float *cos_p, const float *sin_p, int half) {
  for (int i = 0; i < half; i++) {
    float a = x[i], b = x[i + half];
    x[i] = a * cos_p[i] - b * sin_p[i];
    x[i + half] = b * cos_p[i] + a * sin_p[i];
  }
}

/* Sixteen latent values from column i of a cached row (float16 where half, else float32):
 * every reader converts the same way, so a row's keys are the same to prefill and decode. */
static inline __m512 latent16(const void *row, int i, const int half) {
  return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)))
              : _mm512_loadu_ps((const float *)row + i);
}

/* Row `row` (counted from base) of a cache whose rows are D values. */
static inline const void *latent_row(const void *base, size_t row, int D, int half) {
  return (const char *)base + row * D * (half ? 2 : 4);
}

/* e^x, lanes at -80 or below 0 (a softmax weight that small is 0, not a subnormal: those cost
 * microcode assists); x <= 0. Cephes' expf: 2^n times a degree-7 polynomial in the rest, about
 * one ulp. One vector routine, so that a weight never depends on where a compiler put its
 * position (a vectorized body or a scalar tail of libm's expf). */
static inline __m512 exp_weights(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-80.0f), _CMP_LE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-80.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_mov_ps(~tiny, _mm512_scalef_ps(p, n));
}

/* Scores of HB heads (query rows q[i]) against 16 / HB cached rows (k[j]), D floats each: lane
 * i * (16 / HB) + j of the result is q[i] . k[j]. Each sum runs lane-wise over D in order, then
 * through hsum16, whose tree is the same for every slot: a (head, row) score does not depend
 * on HB or on which heads and rows share its block (callers pad a block by repeating a row). */
static inline __attribute__((always_inline)) __m512 dots(const float *const *q,
                                                         const void *const *k, int D,
                                                         const int HB, const int half) {
#ifndef __AVX512F__
  float s[16];
  latent_dots_avx2(q, k, D, HB, half, s);
  return _mm512_loadu_ps(s);
#else
  const int TB = 16 / HB;
  __m512 acc[16];
  for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
  for (int c = 0; c < D; c += 16) {
    __m512 kc[16];
    for (int j = 0; j < TB; j++) kc[j] = latent16(k[j], c, half);
    for (int i = 0; i < HB; i++) {
      const __m512 qc = _mm512_loadu_ps(q[i] + c);
      for (int j = 0; j < TB; j++) acc[i * TB + j] = _mm512_fmadd_ps(qc, kc[j], acc[i * TB + j]);
    }
  }
  return hsum16(acc);
#endif
}

/* acc[i][c] += sum over rows t of w[i][t] * kv[t][c0 + 16 c], for HB heads (weights w[i],
 * KV_CHUNK apart) and CB sixteen-column blocks, rows in order: each head's sums are its own
 * whatever HB and CB. */
static inline __attribute__((always_inline)) void weigh(const float *const *w, const void *kv,
                                                        int len, int D, float *const *out,
                                                        const int HB, const int CB,
                                                        const int half) {
#ifndef __AVX512F__
  latent_weigh_avx2(w, kv, len, D, out, HB, CB, half);
#else
  __m512 acc[16];
  for (int i = 0; i < HB; i++)
    for (int c = 0; c < CB; c++) acc[i * CB + c] = _mm512_setzero_ps();
  for (int t = 0; t < len; t++) {
    __m512 vc[16];
    const void *row = latent_row(kv, t, D, half);
    for (int c = 0; c < CB; c++) vc[c] = latent16(row, 16 * c, half);
    for (int i = 0; i < HB; i++) {
      const __m512 p = _mm512_set1_ps(w[i][t]);
      for (int c = 0; c < CB; c++) acc[i * CB + c] = _mm512_fmadd_ps(p, vc[c], acc[i * CB + c]);
    }
  }
  for (int i = 0; i < HB; i++)
    for (int c = 0; c < CB; c++) _mm512_storeu_ps(out[i] + 16 * c, acc[i * CB + c]);
#endif
}

/* Every head h_lo..h_hi of one query row (q [heads][D]: latent query, then rope) over one
 * chunk of a slot's cached rows (kv: row t at kv + t * D): per head the chunk's peak, its
 * exp-sum and the exp-weighted sum of the latents, part [heads][2 + L]. Heads go four at a
 * time (a head alone where the task has fewer), so each cached row loaded serves four. */
static inline __attribute__((always_inline)) void attend_chunk_t(
    const float *q, const void *kv, int chunk, int length, int h_lo, int h_hi, int D, int L,
    float scale, float *scores, float *part, const int half) {
  const int t0 = chunk * KV_CHUNK, len = length - t0 < KV_CHUNK ? length - t0 : KV_CHUNK;
  const int HB = h_hi - h_lo >= 4 ? 4 : 1, TB = 16 / HB;
  kv = latent_row(kv, t0, D, half);
  for (int b0 = 0; b0 < len; b0 += TB)
    for (int h0 = h_lo; h0 < h_hi; h0 += HB) {
      const float *qp[4];
      const void *kp[16];
      for (int i = 0; i < HB; i++) qp[i] = q + (size_t)(h0 + i < h_hi ? h0 + i : h_hi - 1) * D;
      for (int j = 0; j < TB; j++) kp[j] = latent_row(kv, b0 + j < len ? b0 + j : len - 1, D, half);
      float s[16] __attribute__((aligned(64)));
      _mm512_store_ps(s, _mm512_mul_ps(HB == 4 ? dots(qp, kp, D, 4, half)
                                               : dots(qp, kp, D, 1, half),
                                       _mm512_set1_ps(scale)));
      for (int i = 0; i < HB && h0 + i < h_hi; i++)
        for (int j = 0; j < TB && b0 + j < len; j++)
          scores[(size_t)(h0 + i) * KV_CHUNK + b0 + j] = s[i * TB + j];
    }
  for (int h = h_lo; h < h_hi; h++) {
    float *s = scores + (size_t)h * KV_CHUNK;
    __m512 top = _mm512_set1_ps(-FLT_MAX), sum = _mm512_setzero_ps();
    for (int t = 0; t < len; t += 16) {
      const __mmask16 in = len - t >= 16 ? 0xFFFF : (__mmask16)((1u << (len - t)) - 1);
      top = _mm512_mask_max_ps(top, in, top, _mm512_maskz_loadu_ps(in, s + t));
    }
    const float peak = _mm512_reduce_max_ps(top);
    for (int t = 0; t < len; t += 16) {
      const __mmask16 in = len - t >= 16 ? 0xFFFF : (__mmask16)((1u << (len - t)) - 1);
      const __m512 e = _mm512_maskz_mov_ps(
          in, exp_weights(_mm512_sub_ps(_mm512_maskz_loadu_ps(in, s + t), _mm512_set1_ps(peak))));
      _mm512_mask_storeu_ps(s + t, in, e);
      sum = _mm512_add_ps(sum, e);
    }
    float lanes[16];
    _mm512_storeu_ps(lanes, sum);
    float total = 0;
    for (int i = 0; i < 16; i++) total += lanes[i];
    part[(size_t)h * (L + 2)] = peak, part[(size_t)h * (L + 2) + 1] = total;
  }
  /* The weighted latents: 64 columns of four heads a pass (a head alone: 256 columns). */
  const int CB = HB == 4 ? 4 : 16;
  for (int c0 = 0; c0 < L; c0 += 16 * CB)
    for (int h0 = h_lo; h0 < h_hi; h0 += HB) {
      const float *wp[4];
      float *op[4], spare[16 * 16] __attribute__((aligned(64)));
      for (int i = 0; i < HB; i++) {
        const int h = h0 + i < h_hi ? h0 + i : h_hi - 1;
        wp[i] = scores + (size_t)h * KV_CHUNK;
        op[i] = h0 + i < h_hi ? part + (size_t)h * (L + 2) + 2 + c0 : spare;
      }
      if (L - c0 >= 16 * CB) {
        const void *col = (const char *)kv + (size_t)c0 * (half ? 2 : 4);
        if (HB == 4)
          weigh(wp, col, len, D, op, 4, 4, half);
        else
          weigh(wp, col, len, D, op, 1, 16, half);
        continue;
      }
      for (int c = 0; c0 + c < L; c += 16) { /* L's last columns: 16 at a time */
        float *oc[4];
        for (int i = 0; i < HB; i++) oc[i] = op[i] == spare ? spare : op[i] + c;
        const void *col = (const char *)kv + (size_t)(c0 + c) * (half ? 2 : 4);
        if (HB == 4)
          weigh(wp, col, len, D, oc, 4, 1, half);
        else
          weigh(wp, col, len, D, oc, 1, 1, half);
      }
    }
}

/* One copy of the arithmetic per cache type (attend_chunk_t), not one per call site. */
static __attribute__((noinline)) void attend_chunk(const float *q, const void *kv, int half,
                                                   int chunk, int length, int h_lo, int h_hi,
                                                   int D, int L, float scale, float *scores,
                                                   float *part) {
  if (half)
    attend_chunk_t(q, kv, chunk, length, h_lo, h_hi, D, L, scale, scores, part, 1);
  else
    attend_chunk_t(q, kv, chunk, length, h_lo, h_hi, D, L, scale, scores, part, 0);
}

#include "latent_tiles.h"

/* Decode attention's kernel: 0 float32 FMAs, 1 bf16 products on vdpbf16ps, 2 on AMX-BF16 tiles
 * (latent_tiles.h), each where the build and the CPU have it and the widths are whole 16-column
 * blocks; else FMAs. Before the first em_forward. Returns what it took. */
int em_set_decode_kernel(MlaModel *m, int want) {
  m->decode_kernel = 0;
#ifdef LATENT_BF16
  if (!latent_tiles_fit(m->d[D_KV_LORA], m->d[D_ROPE])) return 0;
  if (want == DECODE_BF16 && bf16_supported()) m->decode_kernel = DECODE_BF16;
#if defined(EDGEDS_EMULATE_TILES)
  if (want == DECODE_TILES) m->decode_kernel = DECODE_TILES;
#elif defined(LATENT_TILES)
  if (want == DECODE_TILES && amx_permitted()) m->decode_kernel = DECODE_TILES;
#endif
#else
  (void)want;
#endif
  return m->decode_kernel;
}

/* The chunks' partial softmaxes of one head merged in position order into its attended latent. */
static void merge_chunks(const float *part, int chunks, size_t chunk_stride, int L, float *out) {
  float peak = -FLT_MAX, sum = 0;
  for (int c = 0; c < chunks; c++) peak = fmaxf(peak, part[c * chunk_stride]);
  for (int i = 0; i < L; i++) out[i] = 0;
  for (int c = 0; c < chunks; c++) {
    const float *p = part + c * chunk_stride;
    const float w = expf(p[0] - peak);
    sum += w * p[1];
    for (int i = 0; i < L; i++) out[i] += w * p[2 + i];
  }
  for (int i = 0; i < L; i++) out[i] /= sum;
}

/* One head's chunks (partials at part, H * (L + 2) apart) merged, then W_UV: its v values. */
static void attended_values(const MlaModel *m, const MLayer *ly, const float *part, int pos, int hd,
                            float *out) {
  const int H = m->d[D_HEADS], L = m->d[D_KV_LORA], dv = m->d[D_V];
  float lat[MAX_LORA];
  merge_chunks(part, pos / KV_CHUNK + 1, (size_t)H * (L + 2), L, lat);
  int8_matvec(lat, L, ly->w_uv + (size_t)hd * L * dv, dv, ly->uv_scale + (size_t)hd * dv, out);
}

/* ---- prefill: decompressed keys and values ---- */

enum { MAX_V = 256 };           /* v_head_dim (native_mla.py checks it) */
enum { DEC_BUDGET = 64 << 20 }; /* bytes of decompressed keys and values a pass holds */
/* prefill attention: query rows a tile, tiles a task (sharing each key load), keys a step */
enum { PT = 8, TT = 4, KG = 64 };

/* 8 rows of x (ldx apart) against int8 w [K][N]: y[r][n] = scale[n] sum_k x[r][k] w[k][n],
 * 32 columns a pass (each weight converted once for the 8 rows). Each row's sums run over k in
 * order, whatever the blocking. N % 16 == 0. */
static void int8_matvec_rows(const float *x, int ldx, int K, const int8_t *w, int N,
                             const float *scale, float *y, int ldy) {
  for (int n0 = 0; n0 < N; n0 += 32) {
    const int two = N - n0 >= 32;
    __m512 acc[8][2];
    for (int r = 0; r < 8; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
      const int8_t *row = w + (size_t)k * N + n0;
      const __m512 a =
          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)row)));
      const __m512 b = two ? _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                 _mm_loadu_si128((const __m128i *)(row + 16))))
                           : a;
      for (int r = 0; r < 8; r++) {
        const __m512 xk = _mm512_set1_ps(x[(size_t)r * ldx + k]);
        acc[r][0] = _mm512_fmadd_ps(xk, a, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(xk, b, acc[r][1]);
      }
    }
    for (int r = 0; r < 8; r++) {
      _mm512_storeu_ps(y + (size_t)r * ldy + n0,
                       _mm512_mul_ps(acc[r][0], _mm512_loadu_ps(scale + n0)));
      if (two)
        _mm512_storeu_ps(y + (size_t)r * ldy + n0 + 16,
                         _mm512_mul_ps(acc[r][1], _mm512_loadu_ps(scale + n0 + 16)));
    }
  }
}

/* Decompressed keys and values of one head, in blocks of 16 cached rows: the keys transposed,
 * [nope + rope][16] (the rope part copied from the latent), then the values [16][v]. */
static inline size_t dec_block(int dk, int dv) { return (size_t)16 * (dk + dv); }

/* Keys a decompressed block holds: 16 (float32, as dec_block) or, for the AMX-BF16 prompt
 * tiles, 64 in bf16: the keys as four B tiles of K^T per 32 key columns (pairs of columns, the
 * columns padded to 32 with zeros), then the values in key pairs (flash_prefill.h's layouts). */
static inline int dec_keys(const MlaModel *m) { return m->prompt_amx ? 64 : 16; }

/* One head's block in 4-byte units. */
static inline size_t dec_units(const MlaModel *m) {
  const int dk = m->d[D_NOPE] + m->d[D_ROPE], dv = m->d[D_V];
  return m->prompt_amx ? (size_t)32 * ((dk + 31) / 32 * 32 + dv) : dec_block(dk, dv);
}

/* Prefill attention of one head for up to TT tiles of PT query rows of one slot (q[PT * i + r]:
 * nope then rope query at position qpos[...]) over that slot's decompressed blocks (dec), in
 * steps of KG keys with an online softmax (flash attention): each step's keys, loaded once,
 * serve every row of the tiles. out[...]: dv values. A row's sums run over keys and columns in
 * one order whatever rows share its tile: keys past a row's position weigh 0 and a step with
 * none of its keys leaves it as it was. */
static __attribute__((noinline)) void attend_tiles(const float *const *q, const int32_t *qpos,
                                                   int tiles, const float *dec, int dk, int dv,
                                                   float scale, float *const *out) {
  int keys = 0, reach[TT];
  for (int i = 0; i < tiles; i++) {
    reach[i] = 0;
    for (int r = 0; r < PT; r++)
      reach[i] = qpos[PT * i + r] + 1 > reach[i] ? qpos[PT * i + r] + 1 : reach[i];
    keys = reach[i] > keys ? reach[i] : keys;
  }
  const size_t bf = dec_block(dk, dv);
  float o[TT * PT][MAX_V] __attribute__((aligned(64))), p[PT][KG] __attribute__((aligned(64)));
  float peak[TT * PT], sum[TT * PT];
  for (int r = 0; r < tiles * PT; r++) {
    peak[r] = -FLT_MAX, sum[r] = 0;
    for (int c = 0; c < dv; c++) o[r][c] = 0;
  }
  for (int g0 = 0; g0 < keys; g0 += KG)
    for (int i = 0; i < tiles; i++) {
      if (g0 >= reach[i]) continue;
      const float *const *qt = q + PT * i;
      const int32_t *pt = qpos + PT * i;
      const int nblk = (reach[i] - g0 < KG ? reach[i] - g0 + 15 : KG) / 16;
      const float *blk = dec + (size_t)(g0 / 16) * bf;
      for (int j = 0; j < nblk; j += 2) { /* scores, two blocks of 16 keys at a time */
        const float *k0 = blk + j * bf, *k1 = j + 1 < nblk ? k0 + bf : k0;
        __m512 acc[PT][2];
        for (int r = 0; r < PT; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
        for (int d = 0; d < dk; d++) {
          const __m512 a = _mm512_load_ps(k0 + 16 * d), b = _mm512_load_ps(k1 + 16 * d);
          for (int r = 0; r < PT; r++) {
            const __m512 qd = _mm512_set1_ps(qt[r][d]);
            acc[r][0] = _mm512_fmadd_ps(qd, a, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(qd, b, acc[r][1]);
          }
        }
        for (int r = 0; r < PT; r++) {
          _mm512_store_ps(p[r] + 16 * j, _mm512_mul_ps(acc[r][0], _mm512_set1_ps(scale)));
          if (j + 1 < nblk)
            _mm512_store_ps(p[r] + 16 * j + 16, _mm512_mul_ps(acc[r][1], _mm512_set1_ps(scale)));
        }
      }
      for (int r = 0; r < PT; r++) { /* the causal mask, then the online softmax's step */
        const int row = PT * i + r;
        __m512 top = _mm512_set1_ps(-FLT_MAX);
        __mmask16 seen[KG / 16];
        for (int j = 0; j < nblk; j++) {
          const __m512i t = _mm512_add_epi32(_mm512_set1_epi32(g0 + 16 * j),
                                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                               11, 12, 13, 14, 15));
          seen[j] = _mm512_cmple_epi32_mask(t, _mm512_set1_epi32(pt[r]));
          top = _mm512_mask_max_ps(top, seen[j], top, _mm512_load_ps(p[r] + 16 * j));
        }
        const float was = peak[row], now = fmaxf(was, _mm512_reduce_max_ps(top));
        float keep[16];
        _mm512_storeu_ps(keep, exp_weights(_mm512_set1_ps(was - now)));
        __m512 total = _mm512_setzero_ps();
        for (int j = 0; j < nblk; j++) {
          const __m512 e = _mm512_maskz_mov_ps(
              seen[j],
              exp_weights(_mm512_sub_ps(_mm512_load_ps(p[r] + 16 * j), _mm512_set1_ps(now))));
          _mm512_store_ps(p[r] + 16 * j, e);
          total = _mm512_add_ps(total, e);
        }
        float lanes[16];
        _mm512_storeu_ps(lanes, total);
        float add = 0;
        for (int l = 0; l < 16; l++) add += lanes[l];
        sum[row] = sum[row] * keep[0] + add, peak[row] = now;
        if (keep[0] != 1.0f)
          for (int c = 0; c < dv; c++) o[row][c] *= keep[0];
      }
      for (int c0 = 0; c0 < dv; c0 += 32) { /* values: 32 columns of every row a pass */
        const int two = dv - c0 >= 32;
        float(*ot)[MAX_V] = o + PT * i;
        __m512 acc[PT][2];
        for (int r = 0; r < PT; r++) {
          acc[r][0] = _mm512_load_ps(ot[r] + c0);
          acc[r][1] = two ? _mm512_load_ps(ot[r] + c0 + 16) : _mm512_setzero_ps();
        }
        for (int t = 0; t < 16 * nblk; t++) {
          const float *v = blk + (size_t)(t / 16) * bf + 16 * dk + (size_t)(t % 16) * dv + c0;
          const __m512 a = _mm512_loadu_ps(v), b = two ? _mm512_loadu_ps(v + 16) : a;
          for (int r = 0; r < PT; r++) {
            const __m512 w = _mm512_set1_ps(p[r][t]);
            acc[r][0] = _mm512_fmadd_ps(w, a, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(w, b, acc[r][1]);
          }
        }
        for (int r = 0; r < PT; r++) {
          _mm512_store_ps(ot[r] + c0, acc[r][0]);
          if (two) _mm512_store_ps(ot[r] + c0 + 16, acc[r][1]);
        }
      }
    }
  for (int r = 0; r < tiles * PT; r++)
    for (int c = 0; c < dv; c++) out[r][c] = o[r][c] / sum[r];
}

/* Attention of a prefill call, keys and values decompressed from the latent (W_UK, W_UV per
 * head) instead of absorbed into each query: per key and head nope + dv MACs instead of
 * 2 * kv_lora_rank + rope. Each slot's cached rows [0, its last position in the call] are
 * decompressed once for all its rows of the call, in passes over as many heads as DEC_BUDGET
 * holds; then tiles of PT consecutive rows of one slot attend, a task per (tile, head). q: proj
 * (each head's nope then rotated rope query); out: vals [rows][H * dv]. A head's arithmetic
 * does not depend on the pass, the tile, the other slots or the thread count. */
/* Rows [t0, t0 + 16) of src's slot decompressed for head h into the block at y. */
static void decompress_block(const MlaModel *m, const MLayer *ly, const void *cl, DecSource src,
                             int h, float *y) {
  const int *d = m->d;
  const int L = d[D_KV_LORA], dr = d[D_ROPE], dn = d[D_NOPE], dv = d[D_V], D = L + dr, dk = dn + dr;
  float x[8 * MAX_LORA], keys[16 * MAX_V] __attribute__((aligned(64)));
  for (int r0 = 0; r0 < 16; r0 += 8) {
    const void *lat[8];
    for (int r = 0; r < 8; r++)
      lat[r] = latent_row(cl, src.slot_row + (src.t0 + r0 + r < src.last ? src.t0 + r0 + r
                                                                          : src.last),
                          D, m->half);
    /* W_UK's per-lora scale on the latent, W_UV's on the output */
    for (int r = 0; r < 8; r++)
      for (int l = 0; l < L; l += 16)
        _mm512_storeu_ps(x + r * L + l,
                         _mm512_mul_ps(latent16(lat[r], l, m->half),
                                       _mm512_loadu_ps(ly->uk_scale + (size_t)h * L + l)));
    int8_matvec_rows(x, L, L, ly->w_ukt + (size_t)h * L * dn, dn, m->ones, keys + r0 * dn, dn);
    for (int r = 0; r < 8; r++)
      for (int l = 0; l < L; l += 16) _mm512_storeu_ps(x + r * L + l, latent16(lat[r], l, m->half));
    int8_matvec_rows(x, L, L, ly->w_uv + (size_t)h * L * dv, dv, ly->uv_scale + (size_t)h * dv,
                     y + 16 * dk + r0 * dv, dv);
    for (int r = 0; r < 8; r++)
      for (int i = 0; i < dr; i += 16) {
        float rope[16];
        _mm512_storeu_ps(rope, latent16(lat[r], L + i, m->half));
        for (int j = 0; j < 16; j++) y[(dn + i + j) * 16 + r0 + r] = rope[j];
      }
  }
  for (int j = 0; j < 16; j++)
    for (int i = 0; i < dn; i++) y[i * 16 + j] = keys[j * dn + i];
}

#ifdef __AMX_BF16__
/* Rows [t0, t0 + 64) of src's slot for head h into the bf16 tile block at y (dec_keys). */
static void decompress_tiles(const MlaModel *m, const MLayer *ly, const void *cl, DecSource src,
                             int h, float *y) {
  const int dk = m->d[D_NOPE] + m->d[D_ROPE], dv = m->d[D_V], X = (dk + 31) / 32;
  float f[4][16 * (256 + MAX_V)] __attribute__((aligned(64)));
  for (int g = 0; g < 4; g++) {
    DecSource part = src;
    part.t0 = src.t0 + 16 * g;
    if (part.t0 > src.last) /* keys no row sees: zeros */
      memset(f[g], 0, dec_block(dk, dv) * sizeof(float));
    else
      decompress_block(m, ly, cl, part, h, f[g]);
  }
  const __m512i order = _mm512_loadu_si512(PAIR_ORDER);
  uint16_t *kt = (uint16_t *)y, *vb = kt + (size_t)64 * 32 * X;
  for (int g = 0; g < 4; g++) /* K^T: row p of tile (g, x) pairs key columns 32x + 2p, + 1 */
    for (int x = 0; x < X; x++)
      for (int p = 0; p < 16; p++) {
        const int c = 32 * x + 2 * p;
        const __m512 lo = c < dk ? _mm512_load_ps(f[g] + c * 16) : _mm512_setzero_ps();
        const __m512 hi = c + 1 < dk ? _mm512_load_ps(f[g] + (c + 1) * 16) : _mm512_setzero_ps();
        _mm512_store_si512(kt + (((size_t)g * X + x) * 16 + p) * 32,
                           _mm512_permutexvar_epi16(order, to_bf16(lo, hi, 1)));
      }
  for (int k = 0; k < 32; k++) /* values: pair k holds keys 2k and 2k + 1 of each column */
    for (int c = 0; c < dv; c += 16) {
      const float *v0 = f[(2 * k) / 16] + 16 * dk + ((2 * k) % 16) * dv + c;
      _mm512_store_si512(vb + ((size_t)k * dv + c) * 2,
                         _mm512_permutexvar_epi16(
                             order, to_bf16(_mm512_loadu_ps(v0), _mm512_loadu_ps(v0 + dv), 1)));
    }
}

/* Prompt attention of n <= 32 query rows of one head (q[r]: nope then rope query at position
 * qpos[r]) over its tile blocks (dec: block j at dec + j * units), on AMX-BF16 tiles: per 64
 * keys S = Q K^T (bf16 products, float32 sums), flash_prefill.h's online softmax step, then
 * O = O * keep + P V. out[r]: dv values. A row's sums are its own (an element of a tile product
 * depends on its row and column only; masked keys weigh exact zeros), so it gives the same bits
 * in any task, call or batch. */
static __attribute__((noinline)) void attend_rows_amx(const float *const *q, const int32_t *qpos,
                                                      int n, const float *dec, size_t units,
                                                      int dk, int dv, float scale,
                                                      float *const *out) {
  const int X = (dk + 31) / 32, Dp = 32 * X, groups = (n + 15) / 16, DG = dv / 16;
  uint16_t qb[32 * 256] __attribute__((aligned(64))), pb[32 * 64] __attribute__((aligned(64)));
  float S[32 * 64] __attribute__((aligned(64))), tmp[16 * 64] __attribute__((aligned(64)));
  float o[32][MAX_V_TILES] __attribute__((aligned(64))), peak[32], sum[32], keep[32];
  PromptTileConfig cfg = {0};
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) cfg.rows[t] = 16, cfg.colsb[t] = 64;
  _tile_loadconfig(&cfg);
  memset(qb, 0, (size_t)groups * 16 * Dp * 2);
  memset(pb, 0, sizeof pb);
  int keys = 0;
  for (int r = 0; r < n; r++) {
    for (int x = 0; x < X; x++) {
      const int c = 32 * x;
      _mm512_store_si512(qb + (size_t)r * Dp + c,
                         to_bf16(_mm512_loadu_ps(q[r] + c),
                                 c + 16 < dk ? _mm512_loadu_ps(q[r] + c + 16) : _mm512_setzero_ps(),
                                 1));
    }
    peak[r] = -FLT_MAX, sum[r] = 0;
    memset(o[r], 0, (size_t)dv * sizeof(float));
    keys = qpos[r] + 1 > keys ? qpos[r] + 1 : keys;
  }
  for (int b0 = 0; b0 < keys; b0 += 64) {
    const uint16_t *kt = (const uint16_t *)(dec + (size_t)(b0 / 64) * units),
                   *vb = kt + (size_t)64 * Dp;
    for (int gr = 0; gr < groups; gr++) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int x = 0; x < X; x++) {
        _tile_loadd(4, qb + (size_t)gr * 16 * Dp + 32 * x, Dp * 2);
        _tile_loadd(5, kt + (size_t)(0 * X + x) * 512, 64);
        _tile_loadd(6, kt + (size_t)(1 * X + x) * 512, 64);
        _tile_dpbf16ps(0, 4, 5);
        _tile_dpbf16ps(1, 4, 6);
        _tile_loadd(5, kt + (size_t)(2 * X + x) * 512, 64);
        _tile_loadd(6, kt + (size_t)(3 * X + x) * 512, 64);
        _tile_dpbf16ps(2, 4, 5);
        _tile_dpbf16ps(3, 4, 6);
      }
      float *sg = S + (size_t)gr * 16 * 64;
      _tile_stored(0, sg, 256);
      _tile_stored(1, sg + 16, 256);
      _tile_stored(2, sg + 32, 256);
      _tile_stored(3, sg + 48, 256);
    }
    for (int r = 0; r < n; r++) {
      const int seen = qpos[r] + 1 - b0;
      if (seen <= 0) continue;
      __m512 sc[4];
      for (int j = 0; j < 4; j++) sc[j] = _mm512_load_ps(S + (size_t)r * 64 + 16 * j);
      softmax_step(sc, seen, scale, peak + r, sum + r, keep + r, pb + (size_t)r * 64, 1);
    }
    for (int gr = 0; gr < groups; gr++)
      for (int d0 = 0; d0 < DG; d0 += 4) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int ks = 0; ks < 2; ks++) {
          const uint16_t *vk = vb + (size_t)ks * 16 * dv * 2;
          _tile_loadd(4, pb + (size_t)gr * 16 * 64 + 32 * ks, 128);
          _tile_loadd(5, vk + (size_t)d0 * 16 * 2, dv * 4);
          _tile_dpbf16ps(0, 4, 5);
          if (d0 + 1 < DG) {
            _tile_loadd(6, vk + (size_t)(d0 + 1) * 16 * 2, dv * 4);
            _tile_dpbf16ps(1, 4, 6);
          }
          if (d0 + 2 < DG) {
            _tile_loadd(5, vk + (size_t)(d0 + 2) * 16 * 2, dv * 4);
            _tile_dpbf16ps(2, 4, 5);
          }
          if (d0 + 3 < DG) {
            _tile_loadd(6, vk + (size_t)(d0 + 3) * 16 * 2, dv * 4);
            _tile_dpbf16ps(3, 4, 6);
          }
        }
        const int cols = DG - d0 < 4 ? DG - d0 : 4;
        _tile_stored(0, tmp, 256);
        if (cols > 1) _tile_stored(1, tmp + 16, 256);
        if (cols > 2) _tile_stored(2, tmp + 32, 256);
        if (cols > 3) _tile_stored(3, tmp + 48, 256);
        for (int j = 0; j < 16 && gr * 16 + j < n; j++) {
          const int r = gr * 16 + j;
          if (qpos[r] + 1 - b0 <= 0) continue;
          const __m512 kr = _mm512_set1_ps(keep[r]);
          for (int c = 0; c < cols; c++) {
            float *od = o[r] + (d0 + c) * 16;
            _mm512_store_ps(od, _mm512_fmadd_ps(_mm512_load_ps(od), kr,
                                                _mm512_load_ps(tmp + j * 64 + 16 * c)));
          }
        }
      }
  }
  _tile_release();
  for (int r = 0; r < n; r++) {
    const __m512 inv = _mm512_set1_ps(1.0f / sum[r]);
    for (int c = 0; c < dv; c += 16)
      _mm512_storeu_ps(out[r] + c, _mm512_mul_ps(_mm512_load_ps(o[r] + c), inv));
  }
}
#endif

/* A block of src's rows for head h into y, in the prompt attention's layout. */
static void decompress(const MlaModel *m, const MLayer *ly, const void *cl, DecSource src, int h,
                       float *y) {
#ifdef __AMX_BF16__
  if (m->prompt_amx) {
    decompress_tiles(m, ly, cl, src, h, y);
    return;
  }
#endif
  decompress_block(m, ly, cl, src, h, y);
}

static void prefill_attention(MlaModel *m, const MLayer *ly, int layer, int rows,
                              const int32_t *slot, const int32_t *pos, const void *cl, int slots,
                              int capacity, const float *proj, float *vals) {
  const int *d = m->d;
  const int H = d[D_HEADS], L = d[D_KV_LORA], dr = d[D_ROPE], dn = d[D_NOPE], dv = d[D_V];
  const int D = L + dr, QW = H * (dn + dr), dk = dn + dr;
  const size_t bf = dec_units(m);
  const int bk = dec_keys(m);
  if ((size_t)slots > m->seg_cap) {
    free(m->seg_base), free(m->slot_keys);
    m->seg_base = malloc((size_t)slots * 2 * sizeof(int32_t));
    m->slot_keys = malloc((size_t)slots * sizeof(SlotKeys));
    m->seg_cap = slots;
  }
  /* need: per slot of the call, its rows' last position + 1 (0: none); first: a kept slot's
   * first block not decompressed yet (em_keep_decompressed), else its first block in the
   * pass's buffer (dec). Kept slots decompress their new blocks into their own buffers. */
  int32_t *need = m->seg_base, *first = need + slots;
  for (int s = 0; s < slots; s++) need[s] = 0;
  for (int r = 0; r < rows; r++)
    if (pos[r] + 1 > need[slot[r]]) need[slot[r]] = pos[r] + 1;
  int blocks = 0, kept_new = 0;
  for (int s = 0; s < slots; s++) {
    if (!need[s]) continue;
    Kept *k = NULL;
    for (int i = 0; i < m->n_kept; i++)
      if (m->kept[i].slot == s && bk * m->kept[i].blocks >= need[s] &&
          layer >= m->kept[i].first && layer < m->kept[i].first + m->kept[i].layers)
        k = &m->kept[i];
    if (k) {
      m->slot_keys[s] = (SlotKeys){k->buf + (size_t)(layer - k->first) * H * k->blocks * bf,
                                   (size_t)k->blocks * bf, 1};
      first[s] = k->done[layer], kept_new += (need[s] + bk - 1) / bk - k->done[layer];
      if (need[s] / bk > k->done[layer]) k->done[layer] = need[s] / bk; /* its full blocks */
    } else {
      m->slot_keys[s] = (SlotKeys){NULL, 0, 0};
      first[s] = blocks, blocks += (need[s] + bk - 1) / bk;
    }
  }
  if ((size_t)(blocks + kept_new) > m->src_cap) {
    free(m->src);
    m->src = malloc((size_t)(blocks + kept_new) * sizeof(DecSource));
    m->src_cap = blocks + kept_new;
  }
  int per = blocks ? (int)(DEC_BUDGET / ((size_t)blocks * bf * sizeof(float))) : H;
  per = per < 1 ? 1 : per > H ? H : per;
  const size_t dec = (size_t)per * blocks * bf;
  if (dec > m->dec_cap) {
    free(m->dec);
    m->dec = alloc64(dec * sizeof(float));
    m->dec_cap = dec;
  }
  /* Sources: the pass's blocks (src[0, blocks): head h's at dst + (h - h0) * hstride), then
   * the kept slots' new ones (head h's at dst + h * hstride). */
  int at = blocks;
  for (int s = 0; s < slots; s++) {
    if (!need[s]) continue;
    SlotKeys *sk = &m->slot_keys[s];
    if (!sk->kept) sk->keys = m->dec + (size_t)first[s] * bf, sk->hstride = (size_t)blocks * bf;
    for (int b = sk->kept ? first[s] : 0; b < (need[s] + bk - 1) / bk; b++)
      m->src[sk->kept ? at++ : first[s] + b] =
          (DecSource){(size_t)s * capacity, bk * b, need[s] - 1, sk->keys + (size_t)b * bf,
                      sk->hstride};
  }
  /* The kept slots' new blocks, every head at once (their buffers hold them all). */
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
  for (int b = blocks; b < blocks + kept_new; b++)
    for (int h = 0; h < H; h++)
      decompress(m, ly, cl, m->src[b], h, m->src[b].dst + h * m->src[b].hstride);
  /* Tiles: up to PT consecutive rows of one slot (rows of a slot come together, in order). */
  int n_tiles = 0;
  for (int r = 0; r < rows;) {
    int n = 1;
    while (n < PT && r + n < rows && slot[r + n] == slot[r]) n++;
    m->tile_row[n_tiles] = r, m->tile_len[n_tiles++] = n;
    r += n;
  }
  /* Tasks: up to TT tiles of one slot. */
  int n_tasks = 0;
  for (int t = 0; t < n_tiles;) {
    int n = 1;
    while (n < TT && t + n < n_tiles && slot[m->tile_row[t + n]] == slot[m->tile_row[t]]) n++;
    m->task_tile[n_tasks++] = t;
    t += n;
  }
  m->task_tile[n_tasks] = n_tiles;
  for (int h0 = 0; h0 < H; h0 += per) {
    const int h1 = h0 + per < H ? h0 + per : H;
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int b = 0; b < blocks; b++)
      for (int h = h0; h < h1; h++)
        decompress(m, ly, cl, m->src[b], h, m->src[b].dst + (h - h0) * m->src[b].hstride);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int task = 0; task < n_tasks; task++)
      for (int h = h0; h < h1; h++) {
        const int t = n_tasks - 1 - task; /* the latest rows first: they have the most keys */
        const float *q[TT * PT];
        float *out[TT * PT], spare[MAX_V];
        int32_t qpos[TT * PT];
        const int t0 = m->task_tile[t], tiles = m->task_tile[t + 1] - t0;
        for (int i = 0; i < tiles; i++) {
          const int r0 = m->tile_row[t0 + i], n = m->tile_len[t0 + i];
          for (int j = 0; j < PT; j++) {
            const int r = r0 + (j < n ? j : n - 1);
            q[PT * i + j] = proj + (size_t)r * QW + h * dk, qpos[PT * i + j] = pos[r];
            out[PT * i + j] = j < n ? vals + (size_t)r * H * dv + h * dv : spare;
          }
        }
        const SlotKeys *sk = &m->slot_keys[slot[m->tile_row[t0]]];
        const float *keys = sk->keys + (size_t)(sk->kept ? h : h - h0) * sk->hstride;
#ifdef __AMX_BF16__
        if (m->prompt_amx) {
          attend_rows_amx(q, qpos, PT * tiles, keys, bf, dk, dv, m->softmax_scale, out);
          continue;
        }
#endif
        attend_tiles(q, qpos, tiles, keys, dk, dv, m->softmax_scale, out);
      }
  }
}

/* ---- routing, exactly as transformers' DeepSeek-V2/V3 gates ---- */

/* Indices of the k largest of v[0..n) (ties: the lower index), in descending order. */
static void top_k(const float *v, int n, int k, int32_t *idx) {
  for (int j = 0; j < k; j++) {
    int best = -1;
    for (int i = 0; i < n; i++) {
      int taken = 0;
      for (int p = 0; p < j; p++) taken |= idx[p] == i;
      if (!taken && (best < 0 || v[i] > v[best])) best = i;
    }
    idx[j] = best;
  }
}

/* logits [experts] -> sel [topk] experts in ascending order, w [topk] their weights. */
static void route(const MlaModel *m, const MLayer *ly, const float *logits, int32_t *sel,
                  float *w) {
  const int E = m->d[D_EXPERTS], k = m->d[D_TOPK], routing = m->d[D_ROUTING], G = m->d[D_GROUPS];
  float scores[MAX_EXPERTS], choice[MAX_EXPERTS];
  if (routing == ROUTE_SIGMOID) {
    for (int e = 0; e < E; e++) scores[e] = 1.0f / (1.0f + expf(-logits[e]));
    for (int e = 0; e < E; e++)
      choice[e] = scores[e] + (ly->router_bias ? ly->router_bias[e] : 0.0f);
  } else {
    float peak = -FLT_MAX, sum = 0;
    for (int e = 0; e < E; e++) peak = fmaxf(peak, logits[e]);
    for (int e = 0; e < E; e++) sum += scores[e] = expf(logits[e] - peak);
    for (int e = 0; e < E; e++) choice[e] = scores[e] /= sum;
  }
  if (routing != ROUTE_SOFTMAX && G > 1) {
    const int per = E / G;
    float group[MAX_GROUPS];
    int32_t keep[MAX_GROUPS];
    for (int g = 0; g < G; g++) {
      const float *c = choice + g * per;
      if (routing == ROUTE_SIGMOID) { /* a group's score: the sum of its two best experts */
        int32_t two[2];
        top_k(c, per, 2, two);
        group[g] = c[two[0]] + c[two[1]];
      } else {
        group[g] = -FLT_MAX;
        for (int i = 0; i < per; i++) group[g] = fmaxf(group[g], c[i]);
      }
    }
    top_k(group, G, m->d[D_TOPK_GROUPS], keep);
    for (int g = 0; g < G; g++) {
      int kept = 0;
      for (int j = 0; j < m->d[D_TOPK_GROUPS]; j++) kept |= keep[j] == g;
      if (!kept)
        for (int i = 0; i < per; i++)
          choice[g * per + i] = routing == ROUTE_SIGMOID ? -INFINITY : 0.0f;
    }
  }
  top_k(choice, E, k, sel);
  float total = 0;
  for (int j = 0; j < k; j++) total += w[j] = scores[sel[j]];
  for (int j = 0; j < k; j++) {
    if (m->d[D_NORM_TOPK]) w[j] /= total + 1e-20f;
    w[j] *= m->routed_scaling;
  }
  for (int a = 1; a < k; a++) /* expert order: the order each token sums its experts in */
    for (int b = a; b > 0 && sel[b] < sel[b - 1]; b--) {
      int32_t t = sel[b];
      sel[b] = sel[b - 1], sel[b - 1] = t;
      float f = w[b];
      w[b] = w[b - 1], w[b - 1] = f;
    }
}

/* ---- the forward pass ---- */

static void grow_scratch(MlaModel *m, int rows, int chunks) {
  const int *d = m->d;
  const int H = d[D_HEADS], D = d[D_KV_LORA] + d[D_ROPE], L = d[D_KV_LORA], hidden = d[D_HIDDEN];
  const int topk = d[D_TOPK] > 0 ? d[D_TOPK] : 1;
  const int q_width =
      H * (d[D_NOPE] + d[D_ROPE]) > d[D_Q_LORA] ? H * (d[D_NOPE] + d[D_ROPE]) : d[D_Q_LORA];
  if (rows > m->rows_cap || chunks > m->chunks_cap) {
    int wide = hidden;
    if (d[D_Q_LORA] > wide) wide = d[D_Q_LORA];
    if (H * d[D_V] > wide) wide = H * d[D_V];
    float **f[] = {&m->h,   &m->xn, &m->proj,    &m->kv,  &m->query, &m->part, &m->vals,
                   &m->out, &m->rs, &m->logit_e, &m->wts, &m->act,   &m->ye,   &m->ars};
    for (size_t i = 0; i < sizeof f / sizeof *f; i++) free(*f[i]);
    free(m->xq), free(m->actq), free(m->sel), free(m->assign), free(m->tok_of), free(m->scores);
    const size_t R = rows, A = R * (topk + 1);
    m->h = alloc64(R * hidden * 4), m->xn = alloc64(R * hidden * 4),
    m->out = alloc64(R * hidden * 4);
    m->proj = alloc64(R * q_width * 4), m->kv = alloc64(R * D * 4),
    m->query = alloc64(R * H * D * 4);
    m->part = alloc64((size_t)m->threads * chunks * H * (L + 2) * 4),
    m->vals = alloc64(R * H * (L > d[D_V] ? L : d[D_V]) * 4);
    m->rs = alloc64(R * 4), m->logit_e = alloc64(R * (d[D_EXPERTS] + 1) * 4),
    m->wts = alloc64(R * topk * 4);
    /* a MoE layer's pairs (act_row), or a dense layer's rows */
    const size_t pairs = R * topk * d[D_MOE_INTER] + R * d[D_SHARED_INTER];
    const size_t acts = pairs > R * d[D_INTER] ? pairs : R * d[D_INTER];
    m->act = alloc64(acts * 4), m->actq = alloc64(acts * m->planes), m->ars = alloc64(A * 4);
    m->actq_lo = m->planes > 1 ? acts : 0, m->xq_lo = m->planes > 1 ? R * wide : 0;
    m->ye = alloc64(A * hidden * 4);
    m->xq = alloc64(R * wide * m->planes), m->sel = alloc64(R * topk * 4),
    m->assign = alloc64(R * topk * 4);
    m->tok_of = alloc64(A * 4);
    m->scores = alloc64((size_t)m->threads * H * KV_CHUNK * 4);
#ifdef LATENT_BF16
    free(m->qtiles), free(m->tile_scratch);
    m->qtiles = NULL, m->tile_scratch = NULL;
    if (m->decode_kernel) {
      m->qtiles = alloc64(R * latent_query_bytes(H, D));
      m->tile_bytes = round64(latent_tile_scratch((H + 15) / 16, D, L));
      m->tile_scratch = alloc64(m->threads * m->tile_bytes);
    }
#endif
    free(m->tile_row), free(m->tile_len), free(m->task_tile);
    m->tile_row = malloc(R * sizeof(int32_t)), m->tile_len = malloc(R * sizeof(int32_t));
    m->task_tile = malloc((R + 1) * sizeof(int32_t));
    m->rows_cap = rows, m->chunks_cap = chunks;
  }
}

/* The time since the last lap goes to `phase`. */
static void lap(MlaModel *m, int phase) {
  const double t = omp_get_wtime();
  m->seconds[phase] += t - m->stamp;
  m->stamp = t;
}

/* Seconds spent in each phase (P_*) since the last reset, into out[P_COUNT]. */
void em_profile(MlaModel *m, double *out, int reset) {
  memcpy(out, m->seconds, sizeof m->seconds);
  if (reset) memset(m->seconds, 0, sizeof m->seconds);
}

/* Where pair a's activations start in act and actq: the routed pairs' rows are the experts'
 * width, the shared expert's rows after them its own (wider) width; a dense layer's rows its. */
static inline int act_width(const int *d, const MLayer *ly, int a, int routed) {
  return !ly->moe ? d[D_INTER] : a < routed ? d[D_MOE_INTER] : d[D_SHARED_INTER];
}
static inline size_t act_row(const int *d, const MLayer *ly, int a, int routed) {
  if (!ly->moe || a < routed) return (size_t)a * act_width(d, ly, a, routed);
  return (size_t)routed * d[D_MOE_INTER] + (size_t)(a - routed) * d[D_SHARED_INTER];
}

/* A dense layer's MLP, or a MoE layer's routed and shared experts, on xq (normed xn for the
 * router): the result into m->out. Row a of act/actq/ye is one (token, expert) pair: expert e's
 * pairs are rows first[j] .. first[j] + count of its job j. */
static void feed_forward(MlaModel *m, const MLayer *ly, int rows) {
  const int *d = m->d;
  const int hidden = d[D_HIDDEN], E = d[D_EXPERTS], k = d[D_TOPK];
  float *out = m->out, *act = m->act, *ye = m->ye;
  Job jobs[MAX_EXPERTS + 1];
  const Mlp *mlp[MAX_EXPERTS + 1];
  int32_t first[MAX_EXPERTS + 1], count[MAX_EXPERTS], offset[MAX_EXPERTS];
  int n_jobs = 0, total = 0, routed = 0;
  if (!ly->moe) {
    mlp[n_jobs] = &ly->mlp, first[n_jobs++] = 0, total = rows;
  } else {
    /* Router logits in float32, sixteen experts a task (a few rows still use every thread);
     * each logit's sum runs over the hidden size in one order, whatever the split. */
    const int eb = (E + 15) / 16;
#pragma omp parallel for collapse(2) schedule(static)
    for (int r = 0; r < rows; r++)
      for (int b = 0; b < eb; b++) {
        const float *x = m->xn + (size_t)r * hidden, *wr = ly->router + 16 * b;
        const __mmask16 mask = E - 16 * b >= 16 ? 0xFFFF : (__mmask16)((1u << (E - 16 * b)) - 1);
        __m512 acc = _mm512_setzero_ps();
        for (int i = 0; i < hidden; i++)
          acc = _mm512_fmadd_ps(_mm512_set1_ps(x[i]),
                                _mm512_maskz_loadu_ps(mask, wr + (size_t)i * E), acc);
        _mm512_mask_storeu_ps(m->logit_e + (size_t)r * (E + 1) + 16 * b, mask, acc);
      }
#pragma omp parallel for schedule(static) if (rows > 1)
    for (int r = 0; r < rows; r++)
      route(m, ly, m->logit_e + (size_t)r * (E + 1), m->sel + (size_t)r * k,
            m->wts + (size_t)r * k);
    /* The (token, choice) pairs grouped by expert. */
    memset(count, 0, sizeof(int32_t) * E);
    for (int i = 0; i < rows * k; i++) count[m->sel[i]]++;
    for (int e = 0; e < E; e++) offset[e] = total, total += count[e];
    memset(count, 0, sizeof(int32_t) * E);
    for (int r = 0; r < rows; r++)
      for (int j = 0; j < k; j++) {
        const int e = m->sel[(size_t)r * k + j], a = offset[e] + count[e]++;
        m->tok_of[a] = r, m->assign[(size_t)r * k + j] = a;
      }
    for (int e = 0; e < E; e++)
      if (count[e]) mlp[n_jobs] = &ly->experts[e], first[n_jobs++] = offset[e];
    routed = total;
    if (ly->shared.gate.K) {
      for (int r = 0; r < rows; r++) m->tok_of[total + r] = r;
      mlp[n_jobs] = &ly->shared, first[n_jobs++] = total;
      total += rows;
    }
  }
  lap(m, P_ROUTE);
  for (int j = 0; j < n_jobs; j++) {
    const int n = (j + 1 < n_jobs ? first[j + 1] : total) - first[j];
    jobs[j] = (Job){&mlp[j]->gate,
                    &mlp[j]->up,
                    m->xq,
                    hidden,
                    ly->moe ? m->tok_of + first[j] : NULL,
                    m->rs,
                    act + act_row(d, ly, first[j], routed),
                    act_width(d, ly, first[j], routed),
                    n};
    jobs[j].lo = lo_at(m, S_MLP_IN, m->xq_lo);
  }
  run_jobs(m, jobs, n_jobs);
  /* Each pair's activations quantized once for its down projection. */
#pragma omp parallel for schedule(static) if (total > 16)
  for (int a = 0; a < total; a++) {
    const size_t at = act_row(d, ly, a, routed);
    quantize_row(m->eps, act + at, act_width(d, ly, a, routed), NULL, NULL, m->actq + at,
                 m->ars + a, lo_plane(m->actq + at, lo_at(m, S_DOWN, m->actq_lo)));
  }
  for (int j = 0; j < n_jobs; j++) {
    jobs[j] = (Job){&mlp[j]->down,
                    NULL,
                    m->actq + act_row(d, ly, first[j], routed),
                    act_width(d, ly, first[j], routed),
                    NULL,
                    m->ars + first[j],
                    (ly->moe ? ye + (size_t)first[j] * hidden : out),
                    hidden,
                    jobs[j].rows};
    jobs[j].lo = lo_at(m, S_DOWN, m->actq_lo);
  }
  run_jobs(m, jobs, n_jobs);
  if (!ly->moe) {
    lap(m, P_DENSE_MLP);
    return;
  }
  const int shared = ly->shared.gate.K != 0;
#pragma omp parallel for schedule(static) if (rows > 1)
  for (int r = 0; r < rows; r++) {
    float *o = out + (size_t)r * hidden;
    for (int i = 0; i < hidden; i++) o[i] = 0;
    for (int j = 0; j < k; j++) {
      const float w = m->wts[(size_t)r * k + j],
                  *y = ye + (size_t)m->assign[(size_t)r * k + j] * hidden;
      for (int i = 0; i < hidden; i++) o[i] += w * y[i];
    }
    if (shared) {
      const float *y = ye + (size_t)(routed + r) * hidden;
      for (int i = 0; i < hidden; i++) o[i] += y[i];
    }
  }
  lap(m, P_EXPERTS);
}

/* Row r's heads [h_lo, h_hi) over chunk c of its slot's cached rows (pos: its position), on the
 * kernel the process took: partials into part (attend_chunk's). */
static void attend_task(MlaModel *m, const void *cl, int capacity, int slot, int pos, int r, int c,
                        int h_lo, int h_hi, float *part) {
  const int H = m->d[D_HEADS], L = m->d[D_KV_LORA], D = L + m->d[D_ROPE];
  const void *kv = latent_row(cl, (size_t)slot * capacity, D, m->half);
  const int t = omp_get_thread_num();
#ifdef LATENT_BF16
  if (m->decode_kernel) {
    attend_chunk_bf16(m->qtiles + (size_t)r * (latent_query_bytes(H, D) / 4), kv, m->half, c,
                      pos + 1, h_lo, h_hi, D, L, m->softmax_scale,
                      m->tile_scratch + (size_t)t * m->tile_bytes, part, m->decode_kernel);
    return;
  }
#endif
  attend_chunk(m->query + (size_t)r * H * D, kv, m->half, c, pos + 1, h_lo, h_hi, D, L,
               m->softmax_scale, m->scores + (size_t)t * H * KV_CHUNK, part);
}

/* Attention of a decode call over the latent cache, W_UK absorbed into each query and W_UV
 * applied to the attended latent: m->proj's queries -> m->vals. */
static void absorbed_attention(MlaModel *m, const MLayer *ly, int rows, const int32_t *slot,
                               const int32_t *pos, const void *cl, int capacity, int max_chunks) {
  const int *d = m->d;
  const int H = d[D_HEADS], L = d[D_KV_LORA], dr = d[D_ROPE], dn = d[D_NOPE], dv = d[D_V];
  const int D = L + dr, QW = H * (dn + dr);
  const size_t part_row = (size_t)max_chunks * H * (L + 2);
  const float *proj = m->proj;
  float *query = m->query, *vals = m->vals;
  /* W_UK absorbed: each head's no-rope query into the latent space. */
#pragma omp parallel for collapse(2) schedule(static)
  for (int r = 0; r < rows; r++)
    for (int hd = 0; hd < H; hd++)
      int8_matvec(proj + (size_t)r * QW + hd * (dn + dr), dn, ly->w_uk + (size_t)hd * dn * L, L,
                  ly->uk_scale + (size_t)hd * L, query + ((size_t)r * H + hd) * D);
#ifdef LATENT_BF16
  if (m->decode_kernel) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++)
      latent_query_tiles(query + (size_t)r * H * D, H, D,
                         m->qtiles + (size_t)r * (latent_query_bytes(H, D) / 4));
  }
#endif
  lap(m, P_ATTN_PROJ);
  if (rows < m->threads) { /* few rows: a task per (row, chunk, heads): every thread busy */
    /* As many heads a task as leaves no thread idle: each task reads its chunk's latents once
     * for its heads (a long row: a chunk a task, all heads; a short one: down to a head a
     * task, or to a group of 16 in bf16). A head's arithmetic is the same in a task of one
     * head (group) or of all. */
    const int tiles = m->decode_kernel != 0, least = !tiles ? 1 : H < 16 ? H : 16;
    int per = H;
    while (per > least && (!tiles || per % 32 == 0) &&
           rows * max_chunks * ((H + per - 1) / per) < m->threads)
      per = (per + 1) / 2;
    const int groups = (H + per - 1) / per;
#pragma omp parallel for collapse(3) schedule(dynamic, 1)
    for (int r = 0; r < rows; r++)
      for (int c = 0; c < max_chunks; c++)
        for (int g = 0; g < groups; g++)
          if (c * KV_CHUNK <= pos[r])
            attend_task(m, cl, capacity, slot[r], pos[r], r, c, per * g,
                        per * g + per < H ? per * g + per : H,
                        m->part + r * part_row + (size_t)c * H * (L + 2));
#pragma omp parallel for collapse(2) schedule(static)
    for (int r = 0; r < rows; r++)
      for (int hd = 0; hd < H; hd++)
        attended_values(m, ly, m->part + r * part_row + (size_t)hd * (L + 2), pos[r], hd,
                        vals + (size_t)r * H * dv + hd * dv);
  } else { /* a task per row, its chunks' partials in the thread's own buffer */
#pragma omp parallel for schedule(dynamic, 1)
    for (int r = 0; r < rows; r++) {
      float *part = m->part + (size_t)omp_get_thread_num() * part_row;
      for (int c = 0; c * KV_CHUNK <= pos[r]; c++)
        attend_task(m, cl, capacity, slot[r], pos[r], r, c, 0, H, part + (size_t)c * H * (L + 2));
      for (int hd = 0; hd < H; hd++)
        attended_values(m, ly, part + (size_t)hd * (L + 2), pos[r], hd,
                        vals + (size_t)r * H * dv + hd * dv);
    }
  }
}

/* `rows` tokens: row r is token ids[r] at position pos[r] of cache slot slot[r], attending to that
 * slot's positions up to its own (rows of one slot come in position order). cache: [layers,
 * slots, capacity, kv_lora_rank + rope] float16 or float32 (em_set_cache_half). Layers
 * [l0, l1) alone: `hidden_in_out` [rows][hidden size] carries the rows' hidden states between
 * calls, read where l0 > 0 (else the rows' embeddings) and written where l1 is short of the
 * last layer; at the last layer the logits of rows `logit_rows` ([n_logits] row indices) go to
 * `logits` [n_logits][vocab]. A prompt prefilled layer by layer, all its calls through one
 * layer before the next, gets the bits of calls through every layer: a row's arithmetic in a
 * layer depends only on the cache rows before it, which its earlier calls wrote at that layer.
 * Returns 0; -1 for a position outside the rope table or the cache or a slot outside the cache,
 * -2 for a token id outside the vocabulary, -3 for a logit row outside the call, -4 for layers
 * out of range or needing `hidden_in_out` without it (nothing is computed then). */
int em_forward_layers(MlaModel *m, int rows, const int64_t *ids, const int32_t *slot,
                      const int32_t *pos, int n_logits, const int32_t *logit_rows, void *cache,
                      int slots, int capacity, int prefill, float *logits, int l0, int l1,
                      float *hidden_in_out) {
  const int *d = m->d;
  const int hidden = d[D_HIDDEN], H = d[D_HEADS], L = d[D_KV_LORA], dr = d[D_ROPE], dn = d[D_NOPE],
            dv = d[D_V];
  const int D = L + dr, QW = H * (dn + dr), qlora = d[D_Q_LORA];
  int longest = 0;
  for (int r = 0; r < rows; r++) {
    if (pos[r] < 0 || pos[r] >= capacity || pos[r] >= m->rope_positions || slot[r] < 0 ||
        slot[r] >= slots)
      return -1;
    if (ids[r] < 0 || ids[r] >= d[D_VOCAB]) return -2;
    longest = pos[r] + 1 > longest ? pos[r] + 1 : longest;
  }
  for (int i = 0; i < n_logits; i++)
    if (logit_rows[i] < 0 || logit_rows[i] >= rows) return -3;
  if (l0 < 0 || l1 > d[D_LAYERS] || l0 >= l1 || (!hidden_in_out && (l0 > 0 || l1 < d[D_LAYERS])))
    return -4;
  omp_set_num_threads(m->threads);
  m->stamp = omp_get_wtime();
  const int max_chunks = (longest + KV_CHUNK - 1) / KV_CHUNK;
  grow_scratch(m, rows > n_logits ? rows : n_logits, max_chunks);
  float *h = m->h, *xn = m->xn, *rs = m->rs, *proj = m->proj, *kv = m->kv, *query = m->query,
        *vals = m->vals;
  uint8_t *xq = m->xq;
  const size_t per_layer = (size_t)slots * capacity * D;

  if (l0 > 0) {
    memcpy(h, hidden_in_out, (size_t)rows * hidden * sizeof(float));
  } else {
#pragma omp parallel for if (rows > 1) /* one row: no team woken for it */
    for (int r = 0; r < rows; r++) {
      float *dst = h + (size_t)r * hidden;
      if (m->embed_q) {
        const int8_t *src = m->embed_q + (size_t)ids[r] * hidden;
        for (int i = 0; i < hidden; i++) dst[i] = src[i] * m->embed_scale[ids[r]];
      } else if (m->embed_h) { /* hidden % 16 == 0 (native_mla.py checks the widths) */
        const uint16_t *src = m->embed_h + (size_t)ids[r] * hidden;
        for (int i = 0; i < hidden; i += 16)
          _mm512_storeu_ps(dst + i,
                           _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(src + i))));
      } else {
        memcpy(dst, m->embed_f + (size_t)ids[r] * hidden, hidden * sizeof(float));
      }
    }
  }
  for (int l = l0; l < l1; l++) {
    const MLayer *ly = &m->layer[l];
    char *cl = (char *)cache + l * per_layer * (m->half ? 2 : 4);
#pragma omp parallel for if (rows > 1)
    for (int r = 0; r < rows; r++)
      quantize_row(m->eps, h + (size_t)r * hidden, hidden, ly->input_norm, xn + (size_t)r * hidden,
                   xq + (size_t)r * hidden, rs + r,
                   lo_plane(xq + (size_t)r * hidden, lo_at(m, S_ATTN_IN, m->xq_lo)));
    /* q_a (or q) and kv_a read the same quantized rows: one loop over both. */
    Job jobs[2] = {
        {qlora ? &ly->q_a : &ly->q, NULL, xq, hidden, NULL, rs, proj, qlora ? qlora : QW, rows},
        {&ly->kv_a, NULL, xq, hidden, NULL, rs, kv, D, rows}};
    jobs[0].lo = jobs[1].lo = lo_at(m, S_ATTN_IN, m->xq_lo);
    run_jobs(m, jobs, 2);
    if (qlora) {
#pragma omp parallel for if (rows > 1)
      for (int r = 0; r < rows; r++)
        quantize_row(m->eps, proj + (size_t)r * qlora, qlora, ly->q_a_norm,
                     proj + (size_t)r * qlora, xq + (size_t)r * qlora, rs + r,
                     lo_plane(xq + (size_t)r * qlora, lo_at(m, S_Q_B, m->xq_lo)));
      Job q = {&ly->q, NULL, xq, qlora, NULL, rs, proj, QW, rows};
      q.lo = lo_at(m, S_Q_B, m->xq_lo);
      run_jobs(m, &q, 1);
    }
    /* The latent (normed) and the rotated rope key into the cache; the query's rope rotated. */
#pragma omp parallel for if (rows > 1)
    for (int r = 0; r < rows; r++) {
      float *c = kv + (size_t)r * D, *q = proj + (size_t)r * QW;
      const float *cs = m->cos_t + (size_t)pos[r] * dr / 2,
                  *sn = m->sin_t + (size_t)pos[r] * dr / 2;
      rms_norm(m->eps, c, L, ly->kv_a_norm);
      rotate(c + L, cs, sn, dr / 2);
      char *to = cl + ((size_t)slot[r] * capacity + pos[r]) * D * (m->half ? 2 : 4);
      if (m->half) /* D % 16 == 0 */
        for (int i = 0; i < D; i += 16)
          _mm256_storeu_si256((__m256i *)(to + 2 * i),
                              _mm512_cvtps_ph(_mm512_loadu_ps(c + i), _MM_FROUND_TO_NEAREST_INT));
      else
        memcpy(to, c, D * sizeof(float));
      for (int hd = 0; hd < H; hd++) {
        rotate(q + hd * (dn + dr) + dn, cs, sn, dr / 2);
        memcpy(query + ((size_t)r * H + hd) * D + L, q + hd * (dn + dr) + dn, dr * sizeof(float));
      }
    }
    if (prefill) {
      lap(m, P_ATTN_PROJ);
      prefill_attention(m, ly, l, rows, slot, pos, cl, slots, capacity, proj, vals);
    } else {
      absorbed_attention(m, ly, rows, slot, pos, cl, capacity, max_chunks);
    }
#pragma omp parallel for if (rows > 1)
    for (int r = 0; r < rows; r++)
      quantize_row(m->eps, vals + (size_t)r * H * dv, H * dv, NULL, NULL, xq + (size_t)r * H * dv,
                   rs + r, lo_plane(xq + (size_t)r * H * dv, lo_at(m, S_O, m->xq_lo)));
    lap(m, P_ATTN);
    Job o = {&ly->o, NULL, xq, H * dv, NULL, rs, m->out, hidden, rows};
    o.lo = lo_at(m, S_O, m->xq_lo);
    run_jobs(m, &o, 1);
#pragma omp parallel for if (rows > 1)
    for (int r = 0; r < rows; r++) {
      float *x = h + (size_t)r * hidden;
      for (int i = 0; i < hidden; i++) x[i] += m->out[(size_t)r * hidden + i];
      quantize_row(m->eps, x, hidden, ly->post_norm, xn + (size_t)r * hidden,
                   xq + (size_t)r * hidden, rs + r,
                   lo_plane(xq + (size_t)r * hidden, lo_at(m, S_MLP_IN, m->xq_lo)));
    }
    lap(m, P_O);
    feed_forward(m, ly, rows);
#pragma omp parallel for if (rows > 1)
    for (int r = 0; r < rows; r++)
      for (int i = 0; i < hidden; i++) h[(size_t)r * hidden + i] += m->out[(size_t)r * hidden + i];
  }
  if (l1 < d[D_LAYERS]) {
    memcpy(hidden_in_out, h, (size_t)rows * hidden * sizeof(float));
    lap(m, P_REST);
    return 0;
  }
  lap(m, P_REST);
#pragma omp parallel for if (n_logits > 1)
  for (int i = 0; i < n_logits; i++)
    quantize_row(m->eps, h + (size_t)logit_rows[i] * hidden, hidden, m->final_norm,
                 xn + (size_t)i * hidden, xq + (size_t)i * hidden, rs + i,
                 lo_plane(xq + (size_t)i * hidden, lo_at(m, S_HEAD, m->xq_lo)));
  Job head = {&m->head, NULL, xq, hidden, NULL, rs, logits, d[D_VOCAB], n_logits};
  head.lo = lo_at(m, S_HEAD, m->xq_lo);
  run_jobs(m, &head, 1);
  lap(m, P_HEAD);
  return 0;
}

/* Every layer: em_forward_layers(..., 0, layers, NULL). */
int em_forward(MlaModel *m, int rows, const int64_t *ids, const int32_t *slot, const int32_t *pos,
               int n_logits, const int32_t *logit_rows, void *cache, int slots, int capacity,
               int prefill, float *logits) {
  return em_forward_layers(m, rows, ids, slot, pos, n_logits, logit_rows, cache, slots, capacity,
                           prefill, logits, 0, m->d[D_LAYERS], NULL);
}
