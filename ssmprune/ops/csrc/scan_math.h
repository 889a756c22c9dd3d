/* Inlined, vectorisable float math shared by the forward and backward scan
 * kernels: exp2/exp from a degree-5 polynomial, log1p on [0, 1], softplus and
 * sigmoid. libm's expf and log1pf are exact to an ulp but calls: the compiler
 * vectorises a loop around them only with -ffast-math (glibc declares its
 * vector variants under __FAST_MATH__), which the kernels are not built with
 * (cpu_kernel.MATH_FLAGS). Non-finite inputs give what libm and torch give.
 */
#ifndef SSMPRUNE_SCAN_MATH_H
#define SSMPRUNE_SCAN_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define LOG2E 1.44269504088896341f

/* 2^f on f in [-0.5, 0.5], degree 5, highest coefficient first (shared by the
 * scalar and the AVX-512 exp2). */
#define EXP2_C5 1.29157e-3f
#define EXP2_C4 9.66853e-3f
#define EXP2_C3 5.551689e-2f
#define EXP2_C2 2.4022265e-1f
#define EXP2_C1 6.9314647e-1f
#define EXP2_C0 1.00000004f

/* 2^x as 2^n * 2^f with a degree-5 polynomial on f in [-0.5, 0.5]: relative
 * error below 4e-7, inlined so the compiler vectorises it. v must lie in
 * [-127, 128] or be NaN (the clamps below see to it): a NaN goes through to
 * the polynomial and comes out NaN, -127 gives 2^-127 -> 0 and 128 (from
 * 127.5) infinity. n is read off the float v + 1.5 * 2^23, whose low mantissa
 * bits hold n + 2^22: a rounding in one add, and no float-to-int conversion
 * (undefined for a NaN). */
static inline float exp2_clamped(float v)
{
    const float shifted = v + 12582912.0f;
    const float n = shifted - 12582912.0f;
    const float f = v - n;
    float p = EXP2_C5;
    p = p * f + EXP2_C4;
    p = p * f + EXP2_C3;
    p = p * f + EXP2_C2;
    p = p * f + EXP2_C1;
    p = p * f + EXP2_C0;
    uint32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    bits = (bits - 0x4B400000u + 127u) << 23; /* the exponent field of 2^n, n in [-127, 128] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* 2^v for any v, as libm for non-finite ones: NaN -> NaN, -inf -> 0, +inf ->
 * inf. The clamps are comparisons, false for a NaN, which they pass on. (Not
 * fmaxf/fminf, which drop a NaN; without -ffinite-math-only the compiler keeps
 * this meaning, at the cost of a compare and a blend per clamp.) */
static inline float exp2_approx(float v)
{
    v = v < -127.0f ? -127.0f : v;
    v = v > 128.0f ? 128.0f : v;
    return exp2_clamped(v);
}

/* exp2_approx for v <= 0 or NaN only (a decay exponent dt * A with dt >= 0 and
 * A <= 0): one clamp fewer, a sizeable part of the state update's cost. */
static inline float exp2_nonpos(float v)
{
    v = v < -127.0f ? -127.0f : v;
    return exp2_clamped(v);
}

static inline float exp_approx(float x)
{
    return exp2_approx(x * LOG2E);
}

/* log1p(y) for y in [0, 1] as 2 atanh(s), s = y / (2 + y) <= 1/3: the odd
 * series to s^15 is accurate to about 1e-8, and inlines and vectorises. */
static inline float log1p_unit(float y)
{
    const float s = y / (2.0f + y), s2 = s * s;
    float p = 1.0f / 15.0f;
    p = p * s2 + 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}

/* torch.nn.functional.softplus (threshold 20) as max(x, 0) + log1p(exp(-|x|)),
 * which never overflows. A NaN fails both comparisons and the log1p term
 * carries it; -inf gives 0 and +inf gives inf, as torch. */
static inline float softplus(float x)
{
    if (x > 20.0f)
        return x;
    return (x > 0.0f ? x : 0.0f) + log1p_unit(exp_approx(-fabsf(x)));
}

/* 1 / (1 + exp(-x)): NaN for a NaN, 0 at -inf, 1 at +inf. */
static inline float sigmoid(float x)
{
    return 1.0f / (1.0f + exp_approx(-x));
}

#endif
