/* Backward of the fused CPU selective scan (selective_scan.c), for training.
 *
 * Per (batch, block of BLOCK channels): recompute the forward states h_t into
 * a buffer, then run the recurrence backwards:
 *   gh_t   = C_t * gy0_t + a_{t+1} * gh_{t+1}        (state gradient)
 *   ga_t   = gh_t * h_{t-1}, a_t = exp(dec_t * A)     -> gdec_t, gA
 *   gx_t   = sum_n gh_t B_t, gB_t += gh_t * x_t,  gC_t += gy0_t * h_t
 * then through x = dt * u, dec = dt + gap * dt0, dt = softplus(delta + bias),
 * the D skip and the silu(z) gate. exp, softplus and sigmoid are the
 * forward's inlined approximations (scan_math.h), so the recomputed states are
 * the forward's and every loop over a block's channels vectorises.
 *
 * All (b d l) tensors are contiguous fp32. Gradients of the shared inputs are
 * written as per-task partial sums that the caller adds up, so no two threads
 * write the same memory:
 *   gA_part (b d n), gD_part (b d), gbias_part (b d),
 *   gB_part, gC_part (nblocks b n l).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "scan_math.h"

#define BLOCK 16

struct bwd_args {
    const float *u, *delta, *A_t, *B, *C, *D, *z, *delta_bias, *gap, *gy;
    float *gu, *gdelta, *gz, *gA_part, *gD_part, *gbias_part, *gB_part, *gC_part;
    int64_t batch, dim, len, nstate;
    int delta_softplus;
};

/* Returns 0 on success, -1 when the state buffer could not be allocated. */
static int block_bwd(const struct bwd_args *a, int64_t b, int64_t blk, int width)
{
    const int64_t len = a->len, n = a->nstate, dim = a->dim, d0 = blk * BLOCK;
    float *hist = malloc(sizeof(float) * (size_t)(len * n * BLOCK));
    float *dts = malloc(sizeof(float) * (size_t)(len * BLOCK));
    float *decs = malloc(sizeof(float) * (size_t)(len * BLOCK));
    float *gh = calloc((size_t)(n * BLOCK), sizeof(float));
    float *gA = calloc((size_t)(n * BLOCK), sizeof(float));
    if (!hist || !dts || !decs || !gh || !gA) {
        free(hist), free(dts), free(decs), free(gh), free(gA);
        return -1;
    }
    float bias[BLOCK] = {0}, dt0[BLOCK] = {0}, skip[BLOCK] = {0};
    float gD[BLOCK] = {0}, gbias[BLOCK] = {0}, gdt0[BLOCK] = {0};
    for (int j = 0; j < width; ++j) {
        bias[j] = a->delta_bias ? a->delta_bias[d0 + j] : 0.0f;
        dt0[j] = a->delta_softplus ? softplus(bias[j]) : bias[j];
        skip[j] = a->D ? a->D[d0 + j] : 0.0f;
    }
    const int64_t row0 = (b * dim + d0) * len; /* element (b, d0, 0) */

    /* Forward recompute: steps and states. */
    for (int64_t t = 0; t < len; ++t) {
        const float g = a->gap ? a->gap[b * len + t] : 0.0f;
        for (int j = 0; j < width; ++j) {
            const float v = a->delta[row0 + j * len + t] + bias[j];
            const float dt = a->delta_softplus ? softplus(v) : v;
            dts[t * BLOCK + j] = dt;
            decs[t * BLOCK + j] = dt + g * dt0[j];
        }
        for (int64_t k = 0; k < n; ++k) {
            const float bk = a->B[(b * n + k) * len + t];
            const float *ak = a->A_t + k * dim + d0;
            float *hk = hist + (t * n + k) * BLOCK;
            const float *hp = t ? hist + ((t - 1) * n + k) * BLOCK : NULL;
            for (int j = 0; j < width; ++j) {
                const float x = dts[t * BLOCK + j] * a->u[row0 + j * len + t];
                const float prev = hp ? hp[j] : 0.0f;
                hk[j] = exp_approx(decs[t * BLOCK + j] * ak[j]) * prev + x * bk;
            }
        }
    }

    /* Backward sweep. */
    float *gBp = a->gB_part + (blk * a->batch + b) * n * len;
    float *gCp = a->gC_part + (blk * a->batch + b) * n * len;
    for (int64_t t = len - 1; t >= 0; --t) {
        const float g = a->gap ? a->gap[b * len + t] : 0.0f;
        float gy0[BLOCK], u[BLOCK], x[BLOCK], gx[BLOCK] = {0}, gdec[BLOCK] = {0};
        for (int j = 0; j < width; ++j) {
            const int64_t e = row0 + j * len + t;
            u[j] = a->u[e];
            x[j] = dts[t * BLOCK + j] * u[j];
            float gyj = a->gy[e];
            if (a->z) {
                float s = skip[j] * u[j];
                for (int64_t k = 0; k < n; ++k)
                    s += a->C[(b * n + k) * len + t] * hist[(t * n + k) * BLOCK + j];
                const float zv = a->z[e], sg = sigmoid(zv);
                a->gz[e] = gyj * s * sg * (1.0f + zv * (1.0f - sg));
                gyj *= zv * sg;
            }
            gy0[j] = gyj;
            gD[j] += gyj * u[j];
        }
        for (int64_t k = 0; k < n; ++k) {
            const float bk = a->B[(b * n + k) * len + t];
            const float ck = a->C[(b * n + k) * len + t];
            const float *ak = a->A_t + k * dim + d0;
            const float *hk = hist + (t * n + k) * BLOCK;
            const float *hp = t ? hist + ((t - 1) * n + k) * BLOCK : NULL;
            float *ghk = gh + k * BLOCK, *gAk = gA + k * BLOCK;
            float sum_b = 0.0f, sum_c = 0.0f;
            /* The two sums over the block's channels may be reordered (OpenMP's
             * reduction): that is all it takes to vectorise the loop. */
            #pragma omp simd reduction(+ : sum_b, sum_c)
            for (int j = 0; j < width; ++j) {
                const float grad = ghk[j] + ck * gy0[j];
                const float decay = exp_approx(decs[t * BLOCK + j] * ak[j]);
                const float ga = grad * (hp ? hp[j] : 0.0f) * decay;
                gdec[j] += ga * ak[j];
                gAk[j] += ga * decs[t * BLOCK + j];
                gx[j] += grad * bk;
                sum_b += grad * x[j];
                sum_c += gy0[j] * hk[j];
                ghk[j] = grad * decay;
            }
            gBp[k * len + t] = sum_b;
            gCp[k * len + t] = sum_c;
        }
        for (int j = 0; j < width; ++j) {
            const int64_t e = row0 + j * len + t;
            const float dt = dts[t * BLOCK + j];
            a->gu[e] = gy0[j] * skip[j] + gx[j] * dt;
            const float gdt = gx[j] * u[j] + gdec[j];
            gdt0[j] += gdec[j] * g;
            float gv = gdt;
            if (a->delta_softplus) {
                const float v = a->delta[e] + bias[j];
                gv = v > 20.0f ? gdt : gdt * sigmoid(v);
            }
            a->gdelta[e] = gv;
            gbias[j] += gv;
        }
    }
    for (int j = 0; j < width; ++j) {
        const int64_t c = b * dim + d0 + j;
        const float dbias0 = a->delta_softplus ? (bias[j] > 20.0f ? 1.0f : sigmoid(bias[j]))
                                               : 1.0f;
        a->gD_part[c] = gD[j];
        a->gbias_part[c] = gbias[j] + gdt0[j] * dbias0;
        for (int64_t k = 0; k < n; ++k)
            a->gA_part[c * n + k] = gA[k * BLOCK + j];
    }
    free(hist), free(dts), free(decs), free(gh), free(gA);
    return 0;
}

int ssmprune_selective_scan_bwd_f32(const float *u, const float *delta, const float *A_t,
                                    const float *B, const float *C, const float *D,
                                    const float *z, const float *delta_bias, const float *gap,
                                    const float *gy, float *gu, float *gdelta, float *gz,
                                    float *gA_part, float *gD_part, float *gbias_part,
                                    float *gB_part, float *gC_part, int64_t batch, int64_t dim,
                                    int64_t len, int64_t nstate, int delta_softplus,
                                    int num_threads)
{
    const struct bwd_args a = {u, delta, A_t, B, C, D, z, delta_bias, gap, gy,
                               gu, gdelta, gz, gA_part, gD_part, gbias_part, gB_part, gC_part,
                               batch, dim, len, nstate, delta_softplus};
    const int64_t nblocks = (dim + BLOCK - 1) / BLOCK;
    int failed = 0;
    #pragma omp parallel for schedule(static) num_threads(num_threads) reduction(|| : failed)
    for (int64_t i = 0; i < batch * nblocks; ++i) {
        const int64_t b = i / nblocks, blk = i % nblocks;
        const int width = dim - blk * BLOCK < BLOCK ? (int)(dim - blk * BLOCK) : BLOCK;
        failed = failed || block_bwd(&a, b, blk, width) != 0;
    }
    return failed ? -1 : 0;
}
