/* Peak bf16 multiply-accumulate rate of this CPU's vdpbf16ps (AVX512_BF16), per thread and over
 * all threads: the ceiling of the prompt attention tile (edgeds/native/flash_prefill.h) on CPUs
 * without AMX.
 *
 *   gcc -O3 -mavx512f -mavx512bf16 -fopenmp benchmarks/kernels/bf16_peak.c -o /tmp/bf16_peak
 *   /tmp/bf16_peak
 *
 * 12 independent accumulators hide the instruction's latency; each starts from its own value,
 * or the compiler merges the identical chains into one. One vdpbf16ps on 512 bits = 32
 * multiply-adds. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

#define ACC 12
#define ITERS 20000000L

static double run(void) {
    const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80);  /* bf16 pairs (1, 1) */
    const __m512bh b = (__m512bh)_mm512_set1_epi32(0x00003f80);  /* (1, 0) */
    __m512 acc[ACC];
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < ITERS; n++)
        for (int i = 0; i < ACC; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    __m512 s = acc[0];
    for (int i = 1; i < ACC; i++) s = _mm512_add_ps(s, acc[i]);
    return (double)_mm512_reduce_add_ps(s);
}

int main(void) {
    int threads = omp_get_max_threads();
    for (int t = 1; t <= threads; t *= 2) {
        double sink = 0, t0 = omp_get_wtime();
#pragma omp parallel num_threads(t) reduction(+ : sink)
        sink += run();
        double s = omp_get_wtime() - t0;
        double macs = (double)t * ITERS * ACC * 32;
        printf("%d thread(s): %.1f GMAC/s bf16 (%.3f s)%s\n", t, macs / s / 1e9, s,
               sink == 0 ? " " : "");
    }
    return 0;
}
