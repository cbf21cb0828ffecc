/* Peak u8 x s8 multiply-accumulate rate of this CPU's AVX-512 VNNI unit (vpdpbusd), per thread
 * and over all threads: the ceiling any int8 GEMM (MLAS, OpenVINO, llama.cpp) works under; and,
 * built with -mavx512bf16, the bf16 rate of vdpbf16ps: the ceiling of the prompt attention tile
 * (edgeds/native/flash_prefill.h) on CPUs without AMX.
 *
 *   gcc -O3 -mavx512f -mavx512vnni -fopenmp benchmarks/kernels/int8_peak.c -o /tmp/int8_peak
 *   gcc -O3 -mavx512f -mavx512vnni -mavx512bf16 -fopenmp benchmarks/kernels/int8_peak.c -o /tmp/int8_peak
 *   /tmp/int8_peak
 *
 * 12 independent accumulators hide the instruction's latency; operands stay in registers, so
 * memory plays no part. One vpdpbusd on 512 bits = 64 multiply-adds = 128 int8 ops; one
 * vdpbf16ps = 32 multiply-adds. The bf16 chains start from distinct values, or the compiler
 * merges identical chains into one. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

#define ACC 12
#define ITERS 20000000L

static double run_int8(void) {
    __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
    __m512i acc[ACC];
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_setzero_si512();
    for (long n = 0; n < ITERS; n++)
        for (int i = 0; i < ACC; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    __m512i s = acc[0];
    for (int i = 1; i < ACC; i++) s = _mm512_add_epi32(s, acc[i]);
    return (double)_mm512_reduce_add_epi32(s);
}

#ifdef __AVX512BF16__
static double run_bf16(void) {
    const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80); /* bf16 pairs (1, 1) */
    const __m512bh b = (__m512bh)_mm512_set1_epi32(0x00003f80); /* (1, 0) */
    __m512 acc[ACC];
    for (int i = 0; i < ACC; i++) acc[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < ITERS; n++)
        for (int i = 0; i < ACC; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    __m512 s = acc[0];
    for (int i = 1; i < ACC; i++) s = _mm512_add_ps(s, acc[i]);
    return (double)_mm512_reduce_add_ps(s);
}
#endif

/* ops: what one instruction counts for in the unit printed. */
static void report(const char *what, double (*run)(void), double ops, const char *unit) {
    int threads = omp_get_max_threads();
    for (int t = 1; t <= threads; t *= 2) {
        double sink = 0, t0 = omp_get_wtime();
#pragma omp parallel num_threads(t) reduction(+ : sink)
        sink += run();
        double s = omp_get_wtime() - t0;
        printf("%d thread(s): %.0f %s %s (%.3f s)%s\n", t, (double)t * ITERS * ACC * ops / s / 1e9,
               unit, what, s, sink == 0 ? " " : "");
    }
}

int main(void) {
    report("int8", run_int8, 128, "GOP/s");
#ifdef __AVX512BF16__
    report("bf16", run_bf16, 32, "GMAC/s");
#endif
    return 0;
}
