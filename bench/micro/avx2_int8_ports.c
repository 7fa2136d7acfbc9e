// What the AVX2 integer small-M kernel (crates/voxide-nn/src/kernels/small_m_int8.rs) can reach
// on this core with its operands in registers and L1: the throughput of each of its vector
// instructions alone and in pairs, and its inner loop (per quad of k: 2 loads of x, 6 broadcasts,
// 6 × vpsignb + vpmaddubsw + vpmaddwd + vpaddd, 192 multiply-adds) against the 16-bit form
// (vpmaddwd on weights widened to int16: 16 multiply-adds per vpmaddwd + vpaddd). PERFORMANCE.md,
// stop 88.
//
//   gcc -O3 -mavx2 -mfma -o /tmp/avx2_int8_ports bench/micro/avx2_int8_ports.c && /tmp/avx2_int8_ports
//
// Instructions a cycle assume the clock given as the first argument (GHz; default: the f32 FMA
// loop's fastest pass at 2 FMAs a cycle, as on the x86 cores of PERFORMANCE.md).
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define N 50000000L
#define R12(I) I(0) I(1) I(2) I(3) I(4) I(5) I(6) I(7) I(8) I(9) I(10) I(11)
#define CLOBBER "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", \
                "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
#define LOOP(name, body) \
    static void name(void) { for (long i = 0; i < N; i++) asm volatile(body ::: CLOBBER); }
#define FMA(a) "vfmadd231ps %%ymm13,%%ymm14,%%ymm" #a "\n"
#define MADDWD(a) "vpmaddwd %%ymm13,%%ymm14,%%ymm" #a "\n"
#define MADDUBSW(a) "vpmaddubsw %%ymm13,%%ymm14,%%ymm" #a "\n"
#define SIGN(a) "vpsignb %%ymm13,%%ymm14,%%ymm" #a "\n"
#define ADD(a) "vpaddd %%ymm13,%%ymm" #a ",%%ymm" #a "\n"
#define MUL2(a) MADDWD(a) MADDUBSW(a)
#define SIGN_MUL(a) SIGN(a) MADDWD(a)
#define SIGN_MUL_ADD(a) SIGN(a) MADDWD(a) ADD(a)
LOOP(fma_loop, R12(FMA))
LOOP(maddwd, R12(MADDWD))
LOOP(maddubsw, R12(MADDUBSW))
LOOP(sign, R12(SIGN))
LOOP(add, R12(ADD))
LOOP(mul2, R12(MUL2))
LOOP(sign_mul, R12(SIGN_MUL))
LOOP(sign_mul_add, R12(SIGN_MUL_ADD))

// The kernel's inner loop over one block (32 quads), 3 weight rows × 2 vectors of x rows.
#define QUADS 32
static int8_t xs[QUADS * 64] __attribute__((aligned(64)));
static int32_t ws[6 * QUADS];
static volatile int sink;
static void sign_kernel(long blocks) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (long r = 0; r < blocks; r++) {
        __m256i acc[6];
        for (int i = 0; i < 6; i++) acc[i] = _mm256_setzero_si256();
        for (int q = 0; q < QUADS; q++) {
            __m256i x0 = _mm256_load_si256((const void *)(xs + q * 64));
            __m256i x1 = _mm256_load_si256((const void *)(xs + q * 64 + 32));
            for (int t = 0; t < 3; t++) {
                __m256i w = _mm256_set1_epi32(ws[t * QUADS + q]);
                __m256i w_abs = _mm256_set1_epi32(ws[(3 + t) * QUADS + q]);
                acc[2 * t] = _mm256_add_epi32(acc[2 * t], _mm256_madd_epi16(
                    _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x0, w)), ones));
                acc[2 * t + 1] = _mm256_add_epi32(acc[2 * t + 1], _mm256_madd_epi16(
                    _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(x1, w)), ones));
            }
        }
        int s = 0;
        for (int i = 0; i < 6; i++) s += _mm256_extract_epi32(acc[i], 0);
        sink = s;
    }
}

// The 16-bit form: 4 weight rows × 2 vectors of x rows, two values of k per 32-bit lane.
static int16_t xs16[2 * QUADS * 32] __attribute__((aligned(64)));
static int32_t ws16[4 * 2 * QUADS];
static void int16_kernel(long blocks) {
    for (long r = 0; r < blocks; r++) {
        __m256i acc[8];
        for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_si256();
        for (int p = 0; p < 2 * QUADS; p++) {
            __m256i x0 = _mm256_load_si256((const void *)(xs16 + p * 32));
            __m256i x1 = _mm256_load_si256((const void *)(xs16 + p * 32 + 16));
            for (int t = 0; t < 4; t++) {
                __m256i w = _mm256_set1_epi32(ws16[t * 2 * QUADS + p]);
                acc[2 * t] = _mm256_add_epi32(acc[2 * t], _mm256_madd_epi16(x0, w));
                acc[2 * t + 1] = _mm256_add_epi32(acc[2 * t + 1], _mm256_madd_epi16(x1, w));
            }
        }
        int s = 0;
        for (int i = 0; i < 8; i++) s += _mm256_extract_epi32(acc[i], 0);
        sink = s;
    }
}

int main(int argc, char **argv) {
    memset(xs, 3, sizeof xs), memset(ws, 2, sizeof ws);
    memset(xs16, 1, sizeof xs16), memset(ws16, 1, sizeof ws16);
    // The fastest of 5 passes: noise only slows a pass.
    double ghz = 0, t;
    for (int pass = 0; pass < 5; pass++) {
        t = now();
        fma_loop();
        double rate = 12.0 * N / 2 / (now() - t) / 1e9;
        ghz = rate > ghz ? rate : ghz;
    }
    if (argc > 1) ghz = atof(argv[1]);
    printf("clock %.2f GHz%s\n", ghz, argc > 1 ? "" : " (from the FMA loop)");
    struct { const char *name; void (*f)(void); int per_iter; } loops[] = {
        {"vfmadd231ps", fma_loop, 12}, {"vpmaddwd", maddwd, 12}, {"vpmaddubsw", maddubsw, 12},
        {"vpsignb", sign, 12}, {"vpaddd", add, 12}, {"vpmaddwd + vpmaddubsw", mul2, 24},
        {"vpsignb + vpmaddwd", sign_mul, 24}, {"vpsignb + vpmaddwd + vpaddd", sign_mul_add, 36},
    };
    for (size_t i = 0; i < sizeof loops / sizeof *loops; i++) {
        t = now();
        loops[i].f();
        double per_cycle = (double)N * loops[i].per_iter / (now() - t) / (ghz * 1e9);
        printf("%-30s %.2f a cycle\n", loops[i].name, per_cycle);
    }
    // Alternated passes; the fastest of each (noise only slows a pass).
    const long blocks = 500000;
    double best_sign = 0, best_int16 = 0;
    for (int pass = 0; pass < 7; pass++) {
        t = now();
        sign_kernel(blocks);
        double rate = (double)blocks * QUADS * 192 / (now() - t);
        best_sign = rate > best_sign ? rate : best_sign;
        t = now();
        int16_kernel(blocks);
        rate = (double)blocks * 2 * QUADS * 4 * 2 * 16 / (now() - t);
        best_int16 = rate > best_int16 ? rate : best_int16;
    }
    printf("kernel, vpsignb form: %.1f GMAC/s, %.2f cycles a quad of k (192 multiply-adds)\n",
           best_sign / 1e9, 192 / (best_sign / (ghz * 1e9)));
    printf("kernel, 16-bit form:  %.1f GMAC/s, %.2f cycles per 192 multiply-adds\n",
           best_int16 / 1e9, 192 / (best_int16 / (ghz * 1e9)));
    return 0;
}
