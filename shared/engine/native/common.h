/* What the CPU kernels of this folder share: a vectorisable e^x and float32 / bfloat16 rows. */
#ifndef EPD_NATIVE_COMMON_H
#define EPD_NATIVE_COMMON_H

#include <stdint.h>
#include <string.h>

/* e^x for |x| <= 88 (clamped; ~1e-38 below -87): 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2, p of
 * degree 6 (relative error ~2e-7). Plain arithmetic, so that the loops calling it vectorise (libm's
 * expf does not). */
static inline float exp_clamped(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = __builtin_floorf(x * 1.44269504f + 0.5f);
    const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { uint32_t u; float f; } two_n = {.u = (uint32_t)((int32_t)n + 127) << 23};
    return p * two_n.f;
}

static inline void load_f32(const float *src, float *dst, int64_t n) { memcpy(dst, src, n * sizeof(float)); }
static inline void store_f32(const float *src, float *dst, int64_t n) { memcpy(dst, src, n * sizeof(float)); }

static inline void load_bf16(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        union { uint32_t u; float f; } x = {.u = (uint32_t)src[i] << 16};
        dst[i] = x.f;
    }
}

static inline void store_bf16(const float *src, uint16_t *dst, int64_t n) { /* round to nearest even */
    for (int64_t i = 0; i < n; i++) {
        union { float f; uint32_t u; } x = {.f = src[i]};
        const uint32_t nan = (x.u & 0x7fffffffu) > 0x7f800000u;
        const uint32_t rounded = (x.u + 0x7fffu + ((x.u >> 16) & 1u)) >> 16;
        dst[i] = (uint16_t)(nan ? (x.u >> 16) | 0x40u : rounded);
    }
}

/* A row as float32: float32 rows are read in place, bfloat16 ones widened into buf. Never copy a float32
 * row to the stack to read it: the copy's narrow stores, read back as wide vectors, stall
 * store-to-load forwarding (the attention kernel ran 2.9x slower so on Zen 3). */
static inline const float *row_f32(const float *src, float *buf, int64_t n) {
    (void)buf, (void)n;
    return src;
}

static inline const float *row_bf16(const uint16_t *src, float *buf, int64_t n) {
    load_bf16(src, buf, n);
    return buf;
}

#endif
