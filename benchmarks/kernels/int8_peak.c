/* Peak u8 x s8 multiply-accumulate rate of this CPU's AVX-512 VNNI unit (vpdpbusd), per thread
 * and over all threads: the ceiling any int8 GEMM (MLAS, OpenVINO, llama.cpp) works under.
 *
 *   gcc -O3 -mavx512f -mavx512vnni -fopenmp benchmarks/kernels/int8_peak.c -o /tmp/int8_peak
 *   /tmp/int8_peak
 *
 * 12 independent accumulators hide the instruction's latency; operands stay in registers, so
 * memory plays no part. One vpdpbusd on 512 bits = 64 multiply-adds = 128 int8 ops. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

#define ACC 12
#define ITERS 20000000L

static double run(void) {
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
    __m512i acc[ACC];
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_setzero_si512();
    for (long n = 0; n < ITERS; n++)
        for (int i = 0; i < ACC; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    __m512i s = acc[0];
    for (int i = 1; i < ACC; i++) s = _mm512_add_epi32(s, acc[i]);
    return (double)_mm512_reduce_add_epi32(s);
}

int main(void) {
    int threads = omp_get_max_threads();
    for (int t = 1; t <= threads; t *= 2) {
        double sink = 0, t0 = omp_get_wtime();
#pragma omp parallel num_threads(t) reduction(+ : sink)
        sink += run();
        double s = omp_get_wtime() - t0;
        double ops = (double)t * ITERS * ACC * 128;
        printf("%d thread(s): %.0f GOP/s int8 (%.3f s)%s\n", t, ops / s / 1e9, s,
               sink == 0 ? " " : "");
    }
    return 0;
}
