/* The CPU's own f32 FMA roof, beside llvmpipe's (`vitgpu bench` prints that one): what the same
 * cores reach with native 256-bit FMA instructions and enough independent chains to hide their
 * latency, one thread per core, no memory traffic. BENCHMARKS.md compares it with the
 * software adapter's WGSL FMA roof and with PyTorch's matmul on the same cores.
 *
 *     gcc -O3 -mavx2 -mfma -fopenmp tools/cpu_roof.c -o /tmp/cpu_roof && /tmp/cpu_roof 2
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

#define CHAINS 10 /* > FMA latency (4) x FMA ports (2): the units never wait on a result */

static float run(long iters, float seed) {
    __m256 acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_ps(seed + c);
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < iters; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
    __m256 s = acc[0];
    for (int c = 1; c < CHAINS; c++) s = _mm256_add_ps(s, acc[c]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : omp_get_max_threads();
    long iters = 100000000L;
    double best = 0.0;
    float sink = 0.0f;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += run(iters, (float)omp_get_thread_num());
        double dt = omp_get_wtime() - t0;
        double gflops = 2.0 * 8 * CHAINS * (double)iters * threads / dt / 1e9;
        if (gflops > best) best = gflops;
    }
    printf("CPU f32 FMA roof: %.1f GFLOP/s (%d threads, AVX2 FMA, best of 5; sink %g)\n", best,
           threads, sink);
    return 0;
}
