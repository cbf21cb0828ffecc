/* AMX-BF16 tile instructions in plain C, for the test suite's build on CPUs without AMX
 * (native.TEST_BUILDS "avx512-emulated-tiles"): the tile code's layouts and padding run and are
 * checked everywhere, not only on the lent Xeon. Every tile is 16 rows of 64 bytes (the only
 * shape latent_tiles.h configures); a product's sums are float32 in k order, which is not the
 * hardware's rounding, so only layouts and results within bf16 error are checked with it. */
#ifndef EDGEDS_TILE_EMULATION_H
#define EDGEDS_TILE_EMULATION_H
#include <stdint.h>
#include <string.h>

typedef struct {
  uint8_t bytes[16][64];
} EmulatedTile;
static __thread EmulatedTile emulated_tiles[8];

static inline void emulated_load(int t, const void *p, long stride) {
  for (int r = 0; r < 16; r++) memcpy(emulated_tiles[t].bytes[r], (const char *)p + r * stride, 64);
}

static inline void emulated_store(int t, void *p, long stride) {
  for (int r = 0; r < 16; r++) memcpy((char *)p + r * stride, emulated_tiles[t].bytes[r], 64);
}

static inline float emulated_bf16(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  const uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* c[m][n] += sum over k of a[m][2k] b[k][2n] + a[m][2k + 1] b[k][2n + 1] (bf16 pairs). */
static inline void emulated_dpbf16ps(int c, int a, int b) {
  for (int m = 0; m < 16; m++)
    for (int n = 0; n < 16; n++) {
      float acc;
      memcpy(&acc, emulated_tiles[c].bytes[m] + 4 * n, 4);
      for (int k = 0; k < 16; k++)
        acc += emulated_bf16(emulated_tiles[a].bytes[m] + 4 * k) *
                   emulated_bf16(emulated_tiles[b].bytes[k] + 4 * n) +
               emulated_bf16(emulated_tiles[a].bytes[m] + 4 * k + 2) *
                   emulated_bf16(emulated_tiles[b].bytes[k] + 4 * n + 2);
      memcpy(emulated_tiles[c].bytes[m] + 4 * n, &acc, 4);
    }
}

/* immintrin.h defines some of these names as macros whatever the target: replaced here. */
#undef _tile_loadconfig
#undef _tile_release
#undef _tile_zero
#undef _tile_loadd
#undef _tile_stored
#undef _tile_dpbf16ps
#define _tile_loadconfig(cfg) ((void)(cfg))
#define _tile_release() ((void)0)
#define _tile_zero(t) memset(emulated_tiles[t].bytes, 0, sizeof emulated_tiles[t].bytes)
#define _tile_loadd(t, p, stride) emulated_load(t, p, stride)
#define _tile_stored(t, p, stride) emulated_store(t, p, stride)
#define _tile_dpbf16ps(c, a, b) emulated_dpbf16ps(c, a, b)
#endif
