/* The routed experts of one MoE layer on the CPU, for the few tokens of a decode step: each active
 * expert's weights are streamed once per ROWS of its tokens (gate/up projection, SiLU(gate) * up,
 * down projection, routing weight), the results summed into the tokens' rows. At a handful of tokens
 * per expert a GEMM library spends most of its time packing the weights it then reads once; this
 * reads them in place. Built and loaded by shared/engine/cpu_kernels.py once per (HIDDEN, INTER).
 *
 * Layouts (row-major, contiguous):
 *   x, out     [T, HIDDEN]
 *   gate_up    [E, HIDDEN, 2 * INTER]   gate columns first (the published fused layout)
 *   down       [E, INTER, HIDDEN]
 *   ids        [T, K] int64            each token's experts
 *   weights    [T, K] float32          each token's routing weights
 * Element type of x, out and the expert weights: float32 (routed_experts_f32) or bfloat16
 * (routed_experts_bf16, as uint16); sums in float32. Returns 0, or -1 when an expert id is outside
 * [0, E) (nothing written), -2 when scratch memory could not be allocated.
 */
#include <stdlib.h>

#include "common.h"

#if !defined(HIDDEN) || !defined(INTER)
#error "build with -DHIDDEN=... -DINTER=..."
#endif
#define H HIDDEN
#define I INTER
#define ROWS 8 /* tokens of one expert computed per pass over its weights */
#ifndef TILE
#define TILE 512 /* output columns whose sums one pass over the weights keeps */
#endif
#ifndef AHEAD
/* Weight rows requested ahead of the one multiplied: two. Further ahead, the requests and the tile of
 * sums crowd L1: at the large random checkpoint's widths (32 experts of 512 x 192, 8 layers, 32 tokens
 * x top-4) 8 rows ahead took 1.3x the time of 2, and no prefetch 1.3x too. */
#define AHEAD 2
#endif


/* Ask for the cache lines of a weight row a few rows ahead of the one being multiplied. */
static inline void prefetch_row(const void *row, int64_t bytes) {
    for (int64_t c = 0; c < bytes; c += 64) __builtin_prefetch((const char *)row + c);
}

/* out[m][:N] = sum_k a[m][k] * w[k][:N] for up to ROWS rows of a, in column tiles of TILE: a tile's
 * sums stay in L1 while the weight rows stream past, each weight read once (for every K, any N). */
#define DEFINE_ROWS_MATMUL(NAME, T, ROW)                                                                \
    static inline void NAME(const float *a, int64_t lda, int64_t rows, const T *w, int64_t K, int64_t N, \
                            float *out, int64_t ldo, float *buf) {                                      \
        for (int64_t n0 = 0; n0 < N; n0 += TILE) {                                                      \
            const int64_t nt = N - n0 < TILE ? N - n0 : TILE;                                           \
            float tile[ROWS][TILE];                                                                     \
            memset(tile, 0, sizeof tile);                                                               \
            for (int64_t k = 0; k < K; k++) {                                                           \
                if (k + AHEAD < K) prefetch_row(w + (k + AHEAD) * N + n0, nt * sizeof(T));              \
                const float *wk = ROW(w + k * N + n0, buf, nt);                                         \
                for (int64_t m = 0; m < rows; m++) {                                                    \
                    const float ak = a[m * lda + k];                                                    \
                    for (int64_t t = 0; t < nt; t++) tile[m][t] += ak * wk[t];                          \
                }                                                                                       \
            }                                                                                           \
            for (int64_t m = 0; m < rows; m++) memcpy(out + m * ldo + n0, tile[m], nt * sizeof(float)); \
        }                                                                                               \
    }

DEFINE_ROWS_MATMUL(rows_matmul_f32, float, row_f32)
DEFINE_ROWS_MATMUL(rows_matmul_bf16, uint16_t, row_bf16)

#define DEFINE_KERNEL(NAME, T, LOAD, MATMUL, STORE)                                                             \
    int64_t NAME(const T *x, const T *gate_up, const T *down, const int64_t *ids, const float *weights,  \
                 T *out, int64_t tokens, int64_t topk, int64_t experts) {                               \
        const int64_t pairs = tokens * topk;                                                            \
        for (int64_t p = 0; p < pairs; p++)                                                             \
            if (ids[p] < 0 || ids[p] >= experts) return -1;                                             \
        int64_t *start = calloc(experts + 1, sizeof(int64_t)), *order = malloc(pairs * sizeof(int64_t)); \
        float *acc = calloc(tokens * H, sizeof(float));                                                 \
        float(*xs)[H] = malloc(ROWS * sizeof *xs), (*h)[2 * I] = malloc(ROWS * sizeof *h);              \
        float(*act)[I] = malloc(ROWS * sizeof *act), (*y)[H] = malloc(ROWS * sizeof *y);                \
        float *wrow = malloc(TILE * sizeof(float));                                  \
        if (!start || !order || !acc || !xs || !h || !act || !y || !wrow) {                             \
            free(start), free(order), free(acc), free(xs), free(h), free(act), free(y), free(wrow);     \
            return -2;                                                                                  \
        }                                                                                               \
        for (int64_t p = 0; p < pairs; p++) start[ids[p] + 1]++; /* counting sort of the pairs */      \
        for (int64_t e = 0; e < experts; e++) start[e + 1] += start[e];                                 \
        for (int64_t p = 0; p < pairs; p++) order[start[ids[p]]++] = p;                                 \
        for (int64_t e = experts; e > 0; e--) start[e] = start[e - 1];                                  \
        start[0] = 0;                                                                                   \
        for (int64_t e = 0; e < experts; e++)                                                           \
            for (int64_t lo = start[e]; lo < start[e + 1]; lo += ROWS) {                                \
                const int64_t rows = start[e + 1] - lo < ROWS ? start[e + 1] - lo : ROWS;               \
                for (int64_t m = 0; m < rows; m++) {                                                    \
                    LOAD(x + (order[lo + m] / topk) * H, xs[m], H);                                     \
                }                                                                                       \
                MATMUL(xs[0], H, rows, gate_up + e * (int64_t)H * 2 * I, H, 2 * I, h[0], 2 * I, wrow);  \
                for (int64_t m = 0; m < rows; m++)                                                      \
                    for (int64_t n = 0; n < I; n++) {                                                   \
                        const float g = h[m][n];                                                        \
                        act[m][n] = g / (1.0f + exp_clamped(-g)) * h[m][I + n];                         \
                    }                                                                                   \
                MATMUL(act[0], I, rows, down + e * (int64_t)I * H, I, H, y[0], H, wrow);                \
                for (int64_t m = 0; m < rows; m++) {                                                    \
                    const int64_t pair = order[lo + m];                                                 \
                    const float wt = weights[pair];                                                     \
                    float *dst = acc + (pair / topk) * H;                                               \
                    for (int64_t n = 0; n < H; n++) dst[n] += wt * y[m][n];                             \
                }                                                                                       \
            }                                                                                           \
        for (int64_t t = 0; t < tokens; t++) STORE(acc + t * H, out + t * H, H);                        \
        free(start), free(order), free(acc), free(xs), free(h), free(act), free(y), free(wrow);         \
        return 0;                                                                                       \
    }

DEFINE_KERNEL(routed_experts_f32, float, load_f32, rows_matmul_f32, store_f32)
DEFINE_KERNEL(routed_experts_bf16, uint16_t, load_bf16, rows_matmul_bf16, store_bf16)
