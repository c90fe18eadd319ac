/* Row-wise argmax on the CPU, as torch.argmax(x, dim=-1) answers it: the first index of a row's largest
 * value, or of its first NaN when it has one. Built and loaded by shared/engine/cpu_kernels.py.
 *
 * torch's CPU argmax compares one element at a time (~1 ns an element here: 4 ms for 32 rows of
 * Qwen3's 151,936 logits). This takes a row in two passes, both in lanes the compiler vectorises:
 * the largest value (and whether any is NaN), then the first index holding it.
 *
 * Layout: x [rows, cols] row-major contiguous, out [rows] int64. float32 (argmax_f32) or bfloat16
 * (argmax_bf16, as uint16). Returns 0.
 */
#include "common.h"

#define LANES 16
typedef float vf __attribute__((vector_size(LANES * 4)));    /* GCC/Clang vectors: the compiler maps */
typedef int32_t vi __attribute__((vector_size(LANES * 4)));  /* them onto the widest registers it has */
typedef uint16_t vh __attribute__((vector_size(LANES * 2)));

static inline vf lanes_f32(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline vf lanes_bf16(const uint16_t *p) {
    vh h;
    memcpy(&h, p, sizeof h);
    return (vf)(__builtin_convertvector(h, vi) << 16);
}
static inline float one_f32(const float *p) { return *p; }
static inline float one_bf16(const uint16_t *p) {
    union { uint32_t u; float f; } x = {.u = (uint32_t)*p << 16};
    return x.f;
}

#define DEFINE_ARGMAX(NAME, T, LANES_OF, ONE)                                                            \
    int64_t NAME(const T *x, int64_t rows, int64_t cols, int64_t *out) {                               \
        const int64_t whole = cols / LANES * LANES;                                                    \
        for (int64_t r = 0; r < rows; r++) {                                                           \
            const T *row = x + r * cols;                                                               \
            vf top = (vf){0} - __builtin_inff();                                                       \
            vi nan = (vi){0};                                                                          \
            for (int64_t i = 0; i < whole; i += LANES) {                                               \
                const vf v = LANES_OF(row + i);                                                        \
                const vi more = v > top;                                                               \
                nan |= v != v;                                                                         \
                top = (vf)(((vi)v & more) | ((vi)top & ~more));                                        \
            }                                                                                          \
            float best = -__builtin_inff();                                                            \
            int any_nan = 0;                                                                           \
            for (int j = 0; j < LANES; j++) {                                                          \
                best = top[j] > best ? top[j] : best;                                                  \
                any_nan |= nan[j] != 0;                                                                \
            }                                                                                          \
            for (int64_t i = whole; i < cols; i++) {                                                   \
                const float v = ONE(row + i);                                                          \
                any_nan |= v != v;                                                                     \
                best = v > best ? v : best;                                                            \
            }                                                                                          \
            /* second pass: the first lane block that holds the answer, then the index in it */       \
            int64_t i = 0;                                                                             \
            for (; i < whole; i += LANES) {                                                            \
                const vf v = LANES_OF(row + i);                                                        \
                const vi hit = any_nan ? v != v : v == best;                                           \
                int any = 0;                                                                           \
                for (int j = 0; j < LANES; j++) any |= hit[j];                                         \
                if (any) break;                                                                        \
            }                                                                                          \
            int64_t at = 0;                                                                            \
            for (; i < cols; i++) {                                                                    \
                const float v = ONE(row + i);                                                          \
                if (any_nan ? v != v : v == best) {                                                    \
                    at = i;                                                                            \
                    break;                                                                             \
                }                                                                                      \
            }                                                                                          \
            out[r] = at;                                                                               \
        }                                                                                              \
        return 0;                                                                                      \
    }

DEFINE_ARGMAX(argmax_f32, float, lanes_f32, one_f32)
DEFINE_ARGMAX(argmax_bf16, uint16_t, lanes_bf16, one_bf16)
