/* Decode attention over a paged KV pool on the CPU: one query token per sequence, keys and values read
 * where they lie in the pool (no gather), the GROUP query heads of each key/value head computed
 * together, an online softmax that rescales once per block. A sequence's blocks are visited once,
 * every key/value head in each: a block is one contiguous stretch of the pool (all heads of its
 * slots), fetched whole while the block before it computes. Built and loaded by
 * shared/engine/cpu_kernels.py, once per (HEAD_DIM, GROUP, BLOCK_SIZE): constant trip counts let the
 * compiler unroll and vectorize every inner loop.
 *
 * Layouts (row-major, contiguous):
 *   q, out   [B, Hkv * GROUP, HEAD_DIM]
 *   k, v     [num_slots, Hkv, HEAD_DIM]   slot = block * BLOCK_SIZE + offset in the block
 *   tables   [B, W] int32                 each row's blocks, in order
 *   lengths  [B] int32                    tokens each row attends to (its newest included), >= 1
 * Element type: float32 (paged_decode_f32) or bfloat16 (paged_decode_bf16, as uint16); sums in float32.
 */
#include "common.h"

#if !defined(HEAD_DIM) || !defined(GROUP) || !defined(BLOCK_SIZE)
#error "build with -DHEAD_DIM=... -DGROUP=... -DBLOCK_SIZE=..."
#endif
#define D HEAD_DIM
#define G GROUP
#define BS BLOCK_SIZE

/* One block of one (sequence, key/value head): the GROUP query rows' scores over its slots, the online
 * softmax rescaled once, the values added. The head's running state: acc, top (running max), sum. */
#define DEFINE_BLOCK(NAME, T, ROW)                                                                      \
    static inline void NAME(const float qs[G][D], const T *k, const T *v, int64_t first, int64_t n,     \
                            int64_t row, float acc[G][D], float top[G], float sum[G]) {                 \
        float kf[D], vf[D], s[G][BS];                                                                   \
        for (int t = 0; t < BS; t++) { /* a whole block: slots past n are the block's own, masked */     \
            const float *kr = ROW(k + (first + t) * row, kf, D);                                        \
            for (int g = 0; g < G; g++) {                                                               \
                float dot = 0.0f;                                                                       \
                for (int d = 0; d < D; d++) dot += qs[g][d] * kr[d];                                    \
                s[g][t] = dot;                                                                          \
            }                                                                                           \
        }                                                                                               \
        for (int g = 0; g < G; g++) {                                                                   \
            float m = top[g], total = 0.0f;                                                             \
            for (int t = 0; t < BS; t++) m = t < n && s[g][t] > m ? s[g][t] : m;                        \
            const float fix = exp_clamped(top[g] - m);                                                  \
            for (int t = 0; t < BS; t++) {                                                              \
                const float p = exp_clamped(s[g][t] - m);                                               \
                s[g][t] = t < n ? p : 0.0f;                                                             \
                total += s[g][t];                                                                       \
            }                                                                                           \
            for (int d = 0; d < D; d++) acc[g][d] *= fix;                                               \
            sum[g] = sum[g] * fix + total;                                                              \
            top[g] = m;                                                                                 \
        }                                                                                               \
        for (int t = 0; t < n; t++) { /* values: only written slots (the rest may hold anything) */     \
            const float *vr = ROW(v + (first + t) * row, vf, D);                                        \
            for (int g = 0; g < G; g++)                                                                 \
                for (int d = 0; d < D; d++) acc[g][d] += s[g][t] * vr[d];                               \
        }                                                                                               \
    }

/* Returns the number of rows refused (a length outside [1, width * BS] or a block outside the pool:
 * nothing is read for them and their output is left as it was); 0 when all were computed. */
#define DEFINE_KERNEL(NAME, BLOCK, T, LOAD, STORE)                                                      \
    int64_t NAME(const T *q, const T *k, const T *v, const int32_t *tables, const int32_t *lengths, T *out, \
                 int64_t batch, int64_t kv_heads, int64_t width, int64_t pool_blocks, float scale) {     \
        const int64_t row = kv_heads * D, block_bytes = BS * row * (int64_t)sizeof(T);                  \
        /* the heads' state on the stack: 8 * Hq * D bytes (32 KiB at 32 heads of 128) */             \
        float qs[kv_heads][G][D], acc[kv_heads][G][D], top[kv_heads][G], sum[kv_heads][G];              \
        int64_t refused = 0;                                                                            \
        for (int64_t b = 0; b < batch; b++) {                                                           \
            const int64_t length = lengths[b];                                                          \
            const int32_t *table = tables + b * width;                                                  \
            int ok = length >= 1 && length <= width * BS;                                               \
            for (int64_t j = 0; ok && j < (length + BS - 1) / BS; j++)                                  \
                ok = table[j] >= 0 && table[j] < pool_blocks;                                           \
            if (!ok) {                                                                                  \
                refused++;                                                                              \
                continue;                                                                               \
            }                                                                                           \
            for (int64_t h = 0; h < kv_heads; h++)                                                      \
                for (int g = 0; g < G; g++) {                                                           \
                    LOAD(q + ((b * kv_heads + h) * G + g) * D, qs[h][g], D);                            \
                    for (int d = 0; d < D; d++) qs[h][g][d] *= scale, acc[h][g][d] = 0.0f;              \
                    top[h][g] = -1e30f, sum[h][g] = 0.0f;                                               \
                }                                                                                       \
            for (int64_t j = 0, left = length; left > 0; j++, left -= BS) {                             \
                const int64_t first = (int64_t)table[j] * BS, n = left < BS ? left : BS;                \
                if (left > BS) { /* the next block, requested while this one computes: blocks lie       \
                                    anywhere in the pool, no hardware prefetcher guesses them */        \
                    const char *nk = (const char *)(k + (int64_t)table[j + 1] * BS * row);              \
                    const char *nv = (const char *)(v + (int64_t)table[j + 1] * BS * row);              \
                    for (int64_t c = 0; c < block_bytes; c += 64) {                                     \
                        __builtin_prefetch(nk + c);                                                     \
                        __builtin_prefetch(nv + c);                                                     \
                    }                                                                                   \
                }                                                                                       \
                for (int64_t h = 0; h < kv_heads; h++)                                                  \
                    BLOCK(qs[h], k + h * D, v + h * D, first, n, row, acc[h], top[h], sum[h]);          \
            }                                                                                           \
            for (int64_t h = 0; h < kv_heads; h++)                                                      \
                for (int g = 0; g < G; g++) {                                                           \
                    const float inv = 1.0f / sum[h][g];                                                 \
                    for (int d = 0; d < D; d++) acc[h][g][d] *= inv;                                    \
                    STORE(acc[h][g], out + ((b * kv_heads + h) * G + g) * D, D);                        \
                }                                                                                       \
        }                                                                                               \
        return refused;                                                                                 \
    }

DEFINE_BLOCK(block_f32, float, row_f32) /* keys and values read in place */
DEFINE_BLOCK(block_bf16, uint16_t, row_bf16)
DEFINE_KERNEL(paged_decode_f32, block_f32, float, load_f32, store_f32)
DEFINE_KERNEL(paged_decode_bf16, block_bf16, uint16_t, load_bf16, store_bf16)
