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

#include "scan_math.h"

#define BLOCK 16
#define TILE 64
#define MAX_STATE 64

#if defined(__AVX512F__)
#include <immintrin.h>

/* exp2_approx on 16 lanes with AVX-512's round-to-integer and scalef: scalef
 * applies 2^n over the whole exponent range itself, which saves the clamping
 * and the bit assembly (a third of the state update). The one clamp, from
 * below, keeps a NaN: vmaxps returns its second operand when either is NaN,
 * so v goes second (an order the compiler keeps without -ffinite-math-only).
 * +inf gives NaN (f = inf - inf), not inf: an infinite exponent comes only
 * from infinite inputs, whose outputs are non-finite either way. */
static inline __m512 exp2_16(__m512 v)
{
    v = _mm512_max_ps(_mm512_set1_ps(-150.0f), v);
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

/* The state recurrence over `count` tokens in portable C, vectorised across
 * the block's channels: h[k] = exp2(decay * a2[k]) * h[k] + x * B[k],
 * acc = sum_k h[k] * C[k]. `nonpos` (a constant at each call) says every
 * exponent decay * a2[k] is <= 0 or NaN, so exp2 needs no upper clamp. */
static inline __attribute__((always_inline)) void states(
    float h[][BLOCK], float a2[][BLOCK], float decay[][BLOCK], float x[][BLOCK],
    const float *B, const float *C, int64_t stride, int count, const int width,
    const int64_t nstate, const int nonpos, float out[][BLOCK])
{
    for (int i = 0; i < count; ++i) {
        float acc[BLOCK] = {0};
        for (int64_t k = 0; k < nstate; ++k) {
            const float bk = B[k * stride + i], ck = C[k * stride + i];
            #pragma omp simd
            for (int j = 0; j < width; ++j) {
                const float v = decay[i][j] * a2[k][j];
                const float e = nonpos ? exp2_nonpos(v) : exp2_approx(v);
                const float hv = e * h[k][j] + x[i][j] * bk;
                h[k][j] = hv;
                acc[j] += hv * ck;
            }
        }
        for (int j = 0; j < width; ++j)
            out[i][j] = acc[j];
    }
}

/* The recurrence of one tile: the AVX-512 form for a full block of 16 states
 * where there is one, else the portable one, without exp2's upper clamp when
 * every A is <= 0 (`a_nonpos`) and every decay step of the tile >= 0. */
static inline __attribute__((always_inline)) void recurrence(
    float h[][BLOCK], float a2[][BLOCK], const int a_nonpos, float decay[][BLOCK],
    float x[][BLOCK], const float *B, const float *C, int64_t stride, int count,
    const int width, const int64_t nstate, float out[][BLOCK])
{
#if defined(__AVX512F__)
    if (width == BLOCK && nstate == 16) {
        states16(h, a2, decay, x, B, C, stride, count, out);
        return;
    }
#endif
    int steps_nonneg = 1; /* false for a NaN step */
    for (int i = 0; i < count; ++i)
        for (int j = 0; j < width; ++j)
            steps_nonneg &= decay[i][j] >= 0.0f;
    if (a_nonpos && steps_nonneg) /* always so with softplus and A = -exp(A_log) */
        states(h, a2, decay, x, B, C, stride, count, width, nstate, 1, out);
    else
        states(h, a2, decay, x, B, C, stride, count, width, nstate, 0, out);
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
    int a_nonpos = 1; /* every A <= 0 (false for a NaN) */
    for (int64_t k = 0; k < nstate; ++k)
        for (int j = 0; j < width; ++j) {
            h[k][j] = 0.0f;
            a2[k][j] = a->A_t[k * a->dim + d0 + j] * LOG2E;
            a_nonpos &= a2[k][j] <= 0.0f;
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
        recurrence(h, a2, a_nonpos, tdt, tu_dt, Bt, Ct, len, count, width, nstate, ty);
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
