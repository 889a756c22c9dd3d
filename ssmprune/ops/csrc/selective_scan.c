/* Fused CPU selective scan: the contract of ssmprune/ops/selective_scan.py in
 * one pass, with the state of a block of channels held in local arrays, so
 * the (b d l n) tensors the eager forms materialise never exist.
 *
 * Vectorised across channels: a block of BLOCK consecutive channels shares
 * the token's B and C values, so every step is a few SIMD multiply-adds and
 * one exp per state row, with no horizontal reduction. Parallel over
 * (batch, channel block) with OpenMP. Each tile of TILE tokens takes three
 * passes: the steps (softplus, gap decay), the recurrence (with AVX-512, a
 * full block's 16 x 16 state stays in registers for the whole tile), and the
 * D skip with the z gate.
 *
 * u, delta, z, y  (b d l) fp32 of any strides (`struct strides`): a
 *                 channel-last layout makes a block one contiguous load
 * A_t             (n d)   fp32, A transposed for the same reason
 * B, C            (b n l) fp32
 * D, delta_bias   (d)     fp32, may be NULL
 * gap             (b l)   fp32 counts, may be NULL
 * num_threads     OpenMP threads, the caller passes torch's intra-op count
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 16
#define TILE 64
#define MAX_STATE 64
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
 * error below 4e-7, inlined so the compiler vectorises it. */
static inline float exp2_approx(float v)
{
    v = v < -126.0f ? -126.0f : (v > 126.0f ? 126.0f : v);
    const float n = __builtin_roundf(v);
    const float f = v - n;
    float p = EXP2_C5;
    p = p * f + EXP2_C4;
    p = p * f + EXP2_C3;
    p = p * f + EXP2_C2;
    p = p * f + EXP2_C1;
    p = p * f + EXP2_C0;
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
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
 * which never overflows. */
static inline float softplus(float x)
{
    if (x > 20.0f)
        return x;
    return (x > 0.0f ? x : 0.0f) + log1p_unit(exp_approx(-fabsf(x)));
}

#if defined(__AVX512F__)
#include <immintrin.h>

/* exp2_approx on 16 lanes with AVX-512's round-to-integer and scalef: scalef
 * applies 2^n over the whole exponent range itself, which saves the clamping
 * and the bit assembly (a third of the state update). */
static inline __m512 exp2_16(__m512 v)
{
    v = _mm512_max_ps(v, _mm512_set1_ps(-150.0f));
    const __m512 n = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(v, n);
    __m512 p = _mm512_set1_ps(EXP2_C5);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(EXP2_C0));
    return _mm512_scalef_ps(p, n);
}

/* The state recurrence over `count` tokens for a full block of 16 channels
 * and 16 states, the state held in registers for the whole tile:
 * h[k] = exp2(decay * a2[k]) * h[k] + x * B[k];  acc = sum_k h[k] * C[k].
 * B and C point at the first token's value of state 0, states `stride` apart. */
static inline void states16(float h[][BLOCK], float a2[][BLOCK], float decay[][BLOCK],
                            float x[][BLOCK], const float *B, const float *C, int64_t stride,
                            int count, float acc[][BLOCK])
{
    __m512 hv[16];
    for (int k = 0; k < 16; ++k)
        hv[k] = _mm512_loadu_ps(h[k]);
    for (int i = 0; i < count; ++i) {
        const __m512 dv = _mm512_loadu_ps(decay[i]), xv = _mm512_loadu_ps(x[i]);
        __m512 sum = _mm512_setzero_ps();
        for (int k = 0; k < 16; ++k) {
            const __m512 e = exp2_16(_mm512_mul_ps(dv, _mm512_loadu_ps(a2[k])));
            hv[k] = _mm512_fmadd_ps(e, hv[k], _mm512_mul_ps(xv, _mm512_set1_ps(B[k * stride + i])));
            sum = _mm512_fmadd_ps(hv[k], _mm512_set1_ps(C[k * stride + i]), sum);
        }
        _mm512_storeu_ps(acc[i], sum);
    }
    for (int k = 0; k < 16; ++k)
        _mm512_storeu_ps(h[k], hv[k]);
}
#endif

struct strides {
    int64_t b, d, l;
};

struct scan_args {
    const float *u, *delta, *A_t, *B, *C, *D, *z, *delta_bias, *gap;
    float *y;
    int64_t batch, dim, len, nstate;
    struct strides su, sdelta, sz, sy;
    int delta_softplus;
};

#define AT(s, ib, id, il) ((ib) * (s).b + (id) * (s).d + (il) * (s).l)

/* Copies a (width x count) tile of a strided (b d l) tensor, starting at
 * channel d0 and token t0, into a token-major buffer tile[t][j]; for the usual
 * token-contiguous layouts each channel is one contiguous read. */
static inline void load_tile(const float *src, struct strides s, int64_t b, int64_t d0,
                             int64_t t0, int width, int count, float tile[][BLOCK])
{
    for (int j = 0; j < width; ++j) {
        const float *row = src + AT(s, b, d0 + j, t0);
        for (int t = 0; t < count; ++t)
            tile[t][j] = row[t * s.l];
    }
}

static inline void store_tile(float *dst, struct strides s, int64_t b, int64_t d0,
                              int64_t t0, int width, int count, float tile[][BLOCK])
{
    for (int j = 0; j < width; ++j) {
        float *row = dst + AT(s, b, d0 + j, t0);
        for (int t = 0; t < count; ++t)
            row[t * s.l] = tile[t][j];
    }
}

static inline __attribute__((always_inline)) void scan_block(const struct scan_args *a, int64_t b, int64_t d0,
                              const int width, const int64_t nstate)
{
    const int64_t len = a->len;
    float h[MAX_STATE][BLOCK];
    float bias[BLOCK], dt0[BLOCK], skip[BLOCK], a2[MAX_STATE][BLOCK];
    /* tdt holds delta, then (first pass, in place) the decay step; tu_dt the
     * step times u; ty the recurrence's C.h, then the output. */
    float tu[TILE][BLOCK], tdt[TILE][BLOCK], tz[TILE][BLOCK], ty[TILE][BLOCK];
    float tu_dt[TILE][BLOCK];
    for (int j = 0; j < width; ++j) {
        bias[j] = a->delta_bias ? a->delta_bias[d0 + j] : 0.0f;
        dt0[j] = a->delta_softplus ? softplus(bias[j]) : bias[j];
        skip[j] = a->D ? a->D[d0 + j] : 0.0f;
    }
    /* A in base 2, so each state decay is one exp2 */
    for (int64_t k = 0; k < nstate; ++k)
        for (int j = 0; j < width; ++j) {
            h[k][j] = 0.0f;
            a2[k][j] = a->A_t[k * a->dim + d0 + j] * LOG2E;
        }

    for (int64_t t0 = 0; t0 < len; t0 += TILE) {
        const int count = len - t0 < TILE ? (int)(len - t0) : TILE;
        load_tile(a->u, a->su, b, d0, t0, width, count, tu);
        load_tile(a->delta, a->sdelta, b, d0, t0, width, count, tdt);
        if (a->z)
            load_tile(a->z, a->sz, b, d0, t0, width, count, tz);
        for (int i = 0; i < count; ++i) {
            const float g = a->gap ? a->gap[b * len + t0 + i] : 0.0f;
            #pragma omp simd
            for (int j = 0; j < width; ++j) {
                float v = tdt[i][j] + bias[j];
                v = a->delta_softplus ? softplus(v) : v;
                tdt[i][j] = v + g * dt0[j];
                tu_dt[i][j] = v * tu[i][j];
            }
        }
        const float *Bt = a->B + b * nstate * len + t0, *Ct = a->C + b * nstate * len + t0;
#if defined(__AVX512F__)
        if (width == BLOCK && nstate == 16)
            states16(h, a2, tdt, tu_dt, Bt, Ct, len, count, ty);
        else
#endif
        for (int i = 0; i < count; ++i) {
            float acc[BLOCK] = {0};
            for (int64_t k = 0; k < nstate; ++k) {
                const float bk = Bt[k * len + i], ck = Ct[k * len + i];
                #pragma omp simd
                for (int j = 0; j < width; ++j) {
                    const float hv = exp2_approx(tdt[i][j] * a2[k][j]) * h[k][j] + tu_dt[i][j] * bk;
                    h[k][j] = hv;
                    acc[j] += hv * ck;
                }
            }
            for (int j = 0; j < width; ++j)
                ty[i][j] = acc[j];
        }
        for (int i = 0; i < count; ++i) {
            #pragma omp simd
            for (int j = 0; j < width; ++j) {
                float out = ty[i][j] + skip[j] * tu[i][j];
                if (a->z)
                    out *= tz[i][j] / (1.0f + exp_approx(-tz[i][j]));
                ty[i][j] = out;
            }
        }
        store_tile(a->y, a->sy, b, d0, t0, width, count, ty);
    }
}

void ssmprune_selective_scan_f32(const float *u, const float *delta, const float *A_t,
                                 const float *B, const float *C, const float *D,
                                 const float *z, const float *delta_bias, const float *gap,
                                 float *y, int64_t batch, int64_t dim, int64_t len,
                                 int64_t nstate, const int64_t *strides, int delta_softplus,
                                 int num_threads)
{
    /* strides: (b, d, l) element strides of u, delta, z and y, in that order */
    const struct scan_args a = {
        u, delta, A_t, B, C, D, z, delta_bias, gap, y, batch, dim, len, nstate,
        {strides[0], strides[1], strides[2]}, {strides[3], strides[4], strides[5]},
        {strides[6], strides[7], strides[8]}, {strides[9], strides[10], strides[11]},
        delta_softplus};
    const int64_t nblocks = (dim + BLOCK - 1) / BLOCK;
    #pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t i = 0; i < batch * nblocks; ++i) {
        const int64_t b = i / nblocks;
        const int64_t d0 = (i % nblocks) * BLOCK;
        const int width = dim - d0 < BLOCK ? (int)(dim - d0) : BLOCK;
        /* Constant arguments let the compiler unroll the common case. */
        if (width == BLOCK && nstate == 16)
            scan_block(&a, b, d0, BLOCK, 16);
        else if (width == BLOCK)
            scan_block(&a, b, d0, BLOCK, nstate);
        else
            scan_block(&a, b, d0, width, nstate);
    }
}
