/* The non-GEMM ops of the BERT encoder, fused: LayerNorm (with the residual add) and
 * self-attention (scores, softmax and context in one pass per query tile).
 *
 * Activations are features x tokens: row f of an (F, T) C-ordered array holds feature f of every
 * token. Both ops vectorise across tokens (contiguous in memory), so their reductions over
 * features or keys are plain vertical vector adds and maxima, with no shuffles. Work is split
 * into tasks run on the process's one thread pool (../pool.h). Nothing here checks its
 * arguments: the Cython wrapper (encoder.pyx.tp) validates them all before releasing the GIL.
 */
#ifndef SPARSEBENCH_ENCODER_OPS_H
#define SPARSEBENCH_ENCODER_OPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "pool.h"
#include "simd.h"
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include "vnni.h"
#define SB_LN_QUANT 1          /* int8 builds: the LayerNorm can quantize its output (below) */
#else
#define SB_LN_QUANT 0
#endif

#define SB_INLINE static inline __attribute__((always_inline))
/* acc[r][j] = zero for r < R, j < J: the start of a register tile, fully unrolled */
#define SB_TILE_ZERO(acc, R, J, zero)                                                          \
    _Pragma("GCC unroll 8") for (int r_ = 0; r_ < (R); r_++)                                   \
        _Pragma("GCC unroll 4") for (int j_ = 0; j_ < (J); j_++) (acc)[r_][j_] = (zero)

/* `masked` is a constant at every call site, so each caller gets a branch-free copy */
SB_INLINE vf sb_load(const float *p, vmask m, int masked) {
    return masked ? vf_maskloadu(p, m) : vf_loadu(p);
}
SB_INLINE void sb_store(float *p, vmask m, vf v, int masked) {
    if (masked) vf_maskstoreu(p, m, v);
    else vf_storeu(p, v);
}

/* ---- LayerNorm ------------------------------------------------------------------------------
 * x <- (x + res - mean) / sqrt(var + eps) * gamma + beta, per token column, mean and (biased)
 * variance over the rows; two passes (sum, then sum of squared deviations), so the variance
 * does not cancel. Columns go in strips of SB_LN_J vectors (8 with AVX-512: a 128-token row is
 * read whole, so each sweep streams through memory; in the BERT forward pass that is 42 us per
 * 768 x 128 LayerNorm instead of 53 with 4); a strip of x (768 x 128: 393 KB) stays in L2
 * across its three sweeps. The op is bound by memory bandwidth, so a second thread gains
 * nothing below a few thousand columns (768 x 128: 21 us on one thread or two; 768 x 4096:
 * 2.9 ms vs 2.3 ms) while a worker that is late or preempted on a busy core makes the caller
 * wait (71 us instead of 23): a task takes at least SB_LN_TASK_COLS columns.
 *
 * In the int8 (AVX512-VNNI) build it can also quantize its output for the int8 kernels, what
 * an int8 linear layer reading x would do next (vnni.h's per-token u8, rows or quads layout):
 * the third sweep tracks each token's largest |y|, a fourth packs the strip, still in L2. The
 * result is bit for bit quantize_activations(x) (the same scales, the same vnni.h packers'
 * arithmetic), without its two passes over x and their two pool runs. */
#if defined(__AVX512F__)
#define SB_LN_J 8            /* 8 sums, then 8 means + 8 scales live: 24 of 32 registers */
#else
#define SB_LN_J 4            /* 12 of 16 */
#endif
#define SB_LN_STRIP (SB_LN_J * SB_VW)
#define SB_LN_TASK_COLS 512
_Static_assert(SB_LN_TASK_COLS % SB_LN_STRIP == 0, "a task is whole strips");

typedef struct {
    float *x;
    const float *res;          /* NULL: no residual */
    const float *gamma;
    const float *beta;
    ptrdiff_t ldx, ldr;
    int rows, cols;
    float eps;
    /* int8 builds, q non-NULL: the output quantized per token into q (row or quad-row r at
     * q + r * ldq; quads: vnni.h's quads layout, else rows), npad columns (cols padded with zero
     * points); scales: npad scales, then npad inverses; bits[task]: the largest |y| seen, as
     * float bits (inf and NaN are >= 0x7f800000: the caller refuses them) */
    uint8_t *q;
    ptrdiff_t ldq;
    int quads, npad;
    float *scales;
    uint32_t *bits;
} sb_ln_job_t;

#if SB_LN_QUANT
/* The strip's tokens c0.. quantized: their scales from amax (each token's largest |y|, as bits;
 * 0 in masked lanes) by vnni.h's rule, then the strip packed by vnni.h's own packers. Returns
 * the largest amax, as bits. */
SB_INLINE uint32_t sb_ln_quantize(const sb_ln_job_t *job, int c0, const vi amax[SB_LN_J]) {
    const int npad = job->npad;
    const int n = job->cols - c0 < SB_LN_STRIP ? job->cols - c0 : SB_LN_STRIP;     /* tokens */
    const int width = npad - c0 < SB_LN_STRIP ? npad - c0 : SB_LN_STRIP;            /* columns of q */
    __attribute__((aligned(64))) float a[SB_LN_STRIP];
    vi most = vi_zero();
#pragma GCC unroll 8
    for (int j = 0; j < SB_LN_J; j++) {
        _mm512_store_si512((void *)(a + j * SB_VW), amax[j]);
        most = _mm512_max_epu32(most, amax[j]);
    }
    float *inv = job->scales + npad;
    for (int t = 0; t < width; t++) {
        job->scales[c0 + t] = sb_dynamic_scale(a[t]);
        inv[c0 + t] = sb_inverse_scale(job->scales[c0 + t]);
    }
    if (job->quads)
        sb_pack_quads(job->x + c0, job->ldx, job->rows, 0, (job->rows + 3) / 4, n, width, inv + c0,
                      job->q + 4 * (ptrdiff_t)c0, job->ldq, 0);
    else
        sb_pack_rows(job->x + c0, job->ldx, 0, job->rows, n, width, inv + c0, job->q + c0, job->ldq, 0);
    return _mm512_reduce_max_epu32(most);
}
#endif

/* Vector j of row h of the strip: x (+ res when with_res) */
SB_INLINE vf sb_ln_input(const float *x, const float *res, ptrdiff_t h, int j, ptrdiff_t ldx, ptrdiff_t ldr,
                         vmask m, int masked, int with_res) {
    vf v = sb_load(x + h * ldx + j * SB_VW, m, masked);
    return with_res ? vf_add(v, sb_load(res + h * ldr + j * SB_VW, m, masked)) : v;
}

/* Columns c0.. of the job (SB_LN_STRIP, fewer if masked); quant: quantize them too (int8
 * builds), returning the largest |y| as bits (else 0).
 *
 * A masked strip (the last tokens of the array, fewer than SB_LN_STRIP: 8, 20, 100...) skips
 * its empty vectors and stores only in its last sweep. Where its rows are less than a vector
 * apart, or its last vector reaches into the next row, a load of a row right after a (masked)
 * store to the row before waits for that store: 768 rows of 1 to 24 tokens took 8.5-9.7 us
 * with the empty vectors already skipped, against 2.8 at 16 tokens (AVX-512). So x + res is
 * summed again in each sweep instead of stored in the first, and the last sweep takes every
 * P-th row, P rows spanning the stored vectors, so that no row loads where the row before it
 * has just stored (2.8-3.0 us at 8 tokens). The order of that sweep does not change the
 * results: no sums run across rows there. */
SB_INLINE uint32_t sb_ln_strip(const sb_ln_job_t *job, int c0, int masked, int with_res, int quant) {
    const ptrdiff_t rows = job->rows;
    const ptrdiff_t ldx = job->ldx, ldr = job->ldr;
    float *x = job->x + c0;
    const float *res = with_res ? job->res + c0 : NULL;
    const int res_again = masked && with_res;       /* x + res summed in every sweep */
    vmask m[SB_LN_J];
    vf acc[SB_LN_J], mean[SB_LN_J], scale[SB_LN_J];
    ptrdiff_t h;
    int j;
    const int nv = masked ? (job->cols - c0 + SB_VW - 1) / SB_VW : SB_LN_J;    /* vectors with tokens */
    const ptrdiff_t step = masked ? (nv * SB_VW + ldx - 1) / ldx : 1;          /* P, at least 1 */
#pragma GCC unroll 8
    for (j = 0; j < SB_LN_J; j++) {
        m[j] = vm_first(job->cols - c0 - j * SB_VW);
        acc[j] = vf_zero();
    }
    for (h = 0; h < rows; h++) {
#pragma GCC unroll 8
        for (j = 0; j < SB_LN_J; j++) {
            if (j >= nv) break;
            vf v = sb_ln_input(x, res, h, j, ldx, ldr, m[j], masked, with_res);
            if (with_res && !masked)
                vf_storeu(x + h * ldx + j * SB_VW, v);
            acc[j] = vf_add(acc[j], v);
        }
    }
    const vf n = vf_set1((float)rows);
#pragma GCC unroll 8
    for (j = 0; j < SB_LN_J; j++) {
        mean[j] = vf_div(acc[j], n);
        acc[j] = vf_zero();
    }
    for (h = 0; h < rows; h++) {
#pragma GCC unroll 8
        for (j = 0; j < SB_LN_J; j++) {
            if (j >= nv) break;
            vf d = vf_sub(sb_ln_input(x, res, h, j, ldx, ldr, m[j], masked, res_again), mean[j]);
            acc[j] = vf_fmadd(d, d, acc[j]);
        }
    }
#pragma GCC unroll 8
    for (j = 0; j < SB_LN_J; j++)
        scale[j] = vf_div(vf_set1(1.0f), vf_sqrt(vf_add(vf_div(acc[j], n), vf_set1(job->eps))));
#if SB_LN_QUANT
    vi amax[SB_LN_J];          /* each token's largest |y| (as bits), when quantizing */
#pragma GCC unroll 8
    for (j = 0; j < SB_LN_J; j++)
        amax[j] = vi_zero();
#endif
    for (ptrdiff_t p = 0; p < step; p++)
        for (h = p; h < rows; h += step) {
            const vf g = vf_set1(job->gamma[h]), b = vf_set1(job->beta[h]);
#pragma GCC unroll 8
            for (j = 0; j < SB_LN_J; j++) {
                if (j >= nv) break;
                vf d = vf_sub(sb_ln_input(x, res, h, j, ldx, ldr, m[j], masked, res_again), mean[j]);
                vf y = vf_fmadd(d, vf_mul(scale[j], g), b);
                sb_store(x + h * ldx + j * SB_VW, m[j], y, masked);
#if SB_LN_QUANT
                if (quant)         /* masked lanes are not tokens: left out */
                    amax[j] = masked ? _mm512_mask_max_epu32(amax[j], m[j], amax[j], sb_absbits(y))
                                     : _mm512_max_epu32(amax[j], sb_absbits(y));
#endif
            }
        }
#if SB_LN_QUANT
    if (quant)
        return sb_ln_quantize(job, c0, amax);
#endif
    return 0;
}

/* every combination of the strip's constant flags gets its own copy */
SB_INLINE uint32_t sb_ln_strip_of(const sb_ln_job_t *job, int c0, int masked) {
    if (job->q) return job->res ? sb_ln_strip(job, c0, masked, 1, 1) : sb_ln_strip(job, c0, masked, 0, 1);
    return job->res ? sb_ln_strip(job, c0, masked, 1, 0) : sb_ln_strip(job, c0, masked, 0, 0);
}

static void sb_ln_task(void *ctx, int task) {
    const sb_ln_job_t *job = (const sb_ln_job_t *)ctx;
    int c0 = task * SB_LN_TASK_COLS;
    int c1 = job->cols - c0 > SB_LN_TASK_COLS ? c0 + SB_LN_TASK_COLS : job->cols;
    uint32_t most = 0, b;
    for (; c1 - c0 >= SB_LN_STRIP; c0 += SB_LN_STRIP)
        if ((b = sb_ln_strip_of(job, c0, 0)) > most) most = b;
    if (c0 < c1)                   /* the last strip of the array: c1 == cols */
        if ((b = sb_ln_strip_of(job, c0, 1)) > most) most = b;
    if (job->bits) job->bits[task] = most;
}

/* Tasks of a LayerNorm of cols columns (the size of the quantizing caller's bits array). */
static inline int sb_ln_tasks(int cols) { return (int)(((ptrdiff_t)cols + SB_LN_TASK_COLS - 1) / SB_LN_TASK_COLS); }

/* x (rows x cols, row stride ldx) <- LayerNorm(x + res) per column; res (stride ldr) may be NULL.
 * q non-NULL (int8 builds only): also quantized into q (see sb_ln_job_t); bits: sb_ln_tasks(cols). */
static void sb_add_layer_norm(float *x, const float *res, ptrdiff_t ldx, ptrdiff_t ldr, int rows,
                              int cols, const float *gamma, const float *beta, float eps, int threads,
                              uint8_t *q, ptrdiff_t ldq, int quads, int npad, float *scales, uint32_t *bits) {
    sb_ln_job_t job = {x, res, gamma, beta, ldx, ldr, rows, cols, eps, q, ldq, quads, npad, scales, bits};
    sb_pool_run(threads, sb_ln_tasks(cols), sb_ln_task, &job);
}

/* ---- GELU ------------------------------------------------------------------------------------
 * x[r, 0:cols] <- GELU(x) in place for rows r < rows of stride ld (simd.h's vf_gelu, the SpMM
 * epilogue's); a task is SB_GELU_TASK elements of one row (a flat array: one long row). */
#define SB_GELU_TASK (1 << 14)

typedef struct {
    float *x;
    ptrdiff_t ld, cols;
    ptrdiff_t chunks;          /* tasks per row */
} sb_gelu_job_t;

static void sb_gelu_task(void *ctx, int task) {
    const sb_gelu_job_t *job = (const sb_gelu_job_t *)ctx;
    const ptrdiff_t r = task / job->chunks, c0 = (task % job->chunks) * SB_GELU_TASK;
    const ptrdiff_t n = job->cols - c0 < SB_GELU_TASK ? job->cols - c0 : SB_GELU_TASK;
    sb_gelu_inplace(job->x + r * job->ld + c0, (int)n);
}

/* rows * ceil(cols / SB_GELU_TASK) tasks: the caller checks that they fit in an int */
static void sb_gelu_rows(float *x, ptrdiff_t ld, ptrdiff_t rows, ptrdiff_t cols, int threads) {
    sb_gelu_job_t job = {x, ld, cols, (cols + SB_GELU_TASK - 1) / SB_GELU_TASK};
    sb_pool_run(threads, (int)(rows * job.chunks), sb_gelu_task, &job);
}

/* ---- self-attention: the skeleton of the float32 and int8 kernels ------------------------------
 * qkv is (3H, T) with T = batch * seq tokens, H = heads * d; head h of sequence b reads rows
 * h*d.. of Q, K and V (blocks 0, 1, 2 of qkv) and columns b*seq.. ; ctx rows h*d.. are written.
 * A job is batch * heads * tiles items (a tile: a range of queries, or all of them); tasks (one
 * per thread, each with its own scratch) claim items one at a time, so a late or slow thread
 * just takes fewer. */
typedef struct sb_att_job sb_att_job_t;
typedef void (*sb_att_item_fn)(const sb_att_job_t *job, int item, unsigned char *scratch);

struct sb_att_job {
    const float *qkv;
    float *ctx;
    const float *mask;         /* (batch, seq) additive, or NULL */
    ptrdiff_t ld;              /* row stride of qkv and ctx (>= T) */
    int heads, head_dim, seq, tiles, items;
    sb_att_item_fn item;
    unsigned char *scratch;    /* per task: scratch_bytes, 64-byte aligned */
    ptrdiff_t scratch_bytes;
    int next;                  /* next item to claim (atomic) */
};

/* What item `item` reads and writes: Q, K, V and ctx of its head and sequence (column 0 of the
 * sequence), the sequence's mask, and the item's tile. */
typedef struct {
    const float *Q, *K, *V, *mask;
    float *out;
    int tile;
} sb_att_item_t;

SB_INLINE sb_att_item_t sb_att_item(const sb_att_job_t *job, int item) {
    const int d = job->head_dim, seq = job->seq;
    const ptrdiff_t ld = job->ld, H = (ptrdiff_t)job->heads * d;
    const int bh = item / job->tiles, h = bh % job->heads, b = bh / job->heads;
    sb_att_item_t it;
    it.Q = job->qkv + h * d * ld + (ptrdiff_t)b * seq;
    it.K = it.Q + H * ld;
    it.V = it.K + H * ld;
    it.mask = job->mask ? job->mask + (ptrdiff_t)b * seq : NULL;
    it.out = job->ctx + h * d * ld + (ptrdiff_t)b * seq;
    it.tile = item % job->tiles;
    return it;
}

static void sb_att_task(void *ctx, int task) {
    sb_att_job_t *job = (sb_att_job_t *)ctx;
    unsigned char *scratch = job->scratch + task * job->scratch_bytes;
    int item;
    while ((item = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED)) < job->items)
        job->item(job, item, scratch);
}

/* ctx (H x T) = self-attention of qkv (3H x T), both with row stride ld, by `item` over
 * batch * heads * tiles items; mask: (batch x seq) additive per key, or NULL. `tasks` tasks (at
 * most one per thread) each use scratch_bytes of `scratch`, 64-byte aligned. */
static void sb_attention_run(sb_att_item_fn item, int tiles, ptrdiff_t scratch_bytes, const float *qkv,
                             float *ctx, const float *mask, ptrdiff_t ld, int heads, int head_dim,
                             int batch, int seq, unsigned char *scratch, int tasks, int threads) {
    sb_att_job_t job = {qkv, ctx, mask, ld, heads, head_dim, seq, tiles, batch * heads * tiles,
                        item, scratch, scratch_bytes, 0};
    sb_pool_run(threads, tasks, sb_att_task, &job);
}

/* ---- float32 self-attention --------------------------------------------------------------------
 * Per (sequence, head, tile of SB_ATT_QT queries), with the 1/sqrt(d) scale already in Q:
 *   1. S = K_h^T Q_tile (+ mask per key), keys x queries, into an L1/L2 scratch tile, keeping the
 *      running maximum of each query column;
 *   2. S <- exp(S - max) and the column sums (the max is always subtracted: it costs one max and
 *      one subtraction per score, and no score can overflow);
 *   3. ctx rows of the head, tile columns = V_h S / column sums.
 * Both products are register tiles of SB_ATT_RB broadcast scalars (keys of K, or rows of V) times
 * SB_ATT_J query vectors. An item is one (sequence, head, tile). */
#define SB_ATT_J 2
#define SB_ATT_QT (SB_ATT_J * SB_VW)
#if defined(__AVX512F__)
#define SB_ATT_RB 8          /* 16 accumulators + 2 query vectors + broadcast + maxima of 32 */
#else
#define SB_ATT_RB 4          /* 8 accumulators + 2 query vectors + broadcast + maxima of 16 */
#endif

/* Bytes of scratch each float32 attention task needs (a multiple of 64). */
static inline ptrdiff_t sb_attention_scratch(int seq, int head_dim) {
    return ((ptrdiff_t)(seq + head_dim) * SB_ATT_QT + 15) / 16 * 64;
}

/* S rows k0..k0+R-1 = keys k0.. of K (d x seq, stride ld) times the packed query tile qp
 * (d x QT), plus mask[k]; mx: running maximum per query lane. */
SB_INLINE void sb_score_rows(const float *K, ptrdiff_t ld, int d, const float *qp,
                             const float *mask, int k0, int R, float *S, vf *mx) {
    vf acc[SB_ATT_RB][SB_ATT_J];
    int i, r, j;
    SB_TILE_ZERO(acc, R, SB_ATT_J, vf_zero());
    for (i = 0; i < d; i++) {
        const float *kr = K + i * ld + k0;
        vf q[SB_ATT_J];
#pragma GCC unroll 4
        for (j = 0; j < SB_ATT_J; j++) q[j] = vf_loadu(qp + i * SB_ATT_QT + j * SB_VW);
#pragma GCC unroll 8
        for (r = 0; r < R; r++) {
            vf k = vf_set1(kr[r]);
#pragma GCC unroll 4
            for (j = 0; j < SB_ATT_J; j++) acc[r][j] = vf_fmadd(k, q[j], acc[r][j]);
        }
    }
#pragma GCC unroll 8
    for (r = 0; r < R; r++) {
        vf add = mask ? vf_set1(mask[k0 + r]) : vf_zero();
#pragma GCC unroll 4
        for (j = 0; j < SB_ATT_J; j++) {
            vf s = vf_add(acc[r][j], add);
            mx[j] = vf_max(s, mx[j]);
            vf_storeu(S + (ptrdiff_t)(k0 + r) * SB_ATT_QT + j * SB_VW, s);
        }
    }
}

/* out rows i0..i0+R-1 (stride ldo) = rows i0.. of V (d x seq, stride ld) times P (seq x QT),
 * times inv (1 / column sums); `masked`: only the first columns of the tile are stored (m). */
SB_INLINE void sb_context_rows(const float *V, ptrdiff_t ld, int seq, const float *P, int i0,
                               int R, const vf *inv, float *out, ptrdiff_t ldo, const vmask *m,
                               int masked) {
    vf acc[SB_ATT_RB][SB_ATT_J];
    const float *vr[SB_ATT_RB];
    int k, r, j;
    SB_TILE_ZERO(acc, R, SB_ATT_J, vf_zero());
#pragma GCC unroll 8
    for (r = 0; r < R; r++) vr[r] = V + (ptrdiff_t)(i0 + r) * ld;
    for (k = 0; k < seq; k++) {
        vf p[SB_ATT_J];
#pragma GCC unroll 4
        for (j = 0; j < SB_ATT_J; j++) p[j] = vf_loadu(P + (ptrdiff_t)k * SB_ATT_QT + j * SB_VW);
#pragma GCC unroll 8
        for (r = 0; r < R; r++) {
            vf v = vf_set1(vr[r][k]);
#pragma GCC unroll 4
            for (j = 0; j < SB_ATT_J; j++) acc[r][j] = vf_fmadd(v, p[j], acc[r][j]);
        }
    }
#pragma GCC unroll 8
    for (r = 0; r < R; r++)
#pragma GCC unroll 4
        for (j = 0; j < SB_ATT_J; j++)
            sb_store(out + (ptrdiff_t)(i0 + r) * ldo + j * SB_VW, m[j], vf_mul(acc[r][j], inv[j]),
                     masked);
}

SB_INLINE void sb_context(const float *V, ptrdiff_t ld, int d, int seq, const float *P,
                          const vf *inv, float *out, const vmask *m, int masked) {
    int i = 0;
    for (; d - i >= SB_ATT_RB; i += SB_ATT_RB)
        sb_context_rows(V, ld, seq, P, i, SB_ATT_RB, inv, out, ld, m, masked);
    for (; i < d; i++)
        sb_context_rows(V, ld, seq, P, i, 1, inv, out, ld, m, masked);
}

static void sb_attention_item(const sb_att_job_t *job, int item, unsigned char *scratch) {
    const int d = job->head_dim, seq = job->seq;
    const ptrdiff_t ld = job->ld;
    const sb_att_item_t it = sb_att_item(job, item);
    const int q0 = it.tile * SB_ATT_QT;
    const int nq = seq - q0 < SB_ATT_QT ? seq - q0 : SB_ATT_QT;
    const float *Q = it.Q, *K = it.K, *V = it.V, *mask = it.mask;
    float *out = it.out + q0;
    float *S = (float *)scratch;
    float *qp = S + (ptrdiff_t)seq * SB_ATT_QT;
    vmask m[SB_ATT_J];
    vf mx[SB_ATT_J], sum[SB_ATT_J];
    int i, j, k;

    for (j = 0; j < SB_ATT_J; j++) {
        m[j] = vm_first(nq - j * SB_VW);
        mx[j] = vf_set1(-INFINITY);
        sum[j] = vf_zero();
    }
    for (i = 0; i < d; i++)      /* the query tile, packed and zero-padded */
        for (j = 0; j < SB_ATT_J; j++)
            vf_storeu(qp + i * SB_ATT_QT + j * SB_VW, vf_maskloadu(Q + i * ld + q0 + j * SB_VW, m[j]));
    for (k = 0; seq - k >= SB_ATT_RB; k += SB_ATT_RB)
        sb_score_rows(K, ld, d, qp, mask, k, SB_ATT_RB, S, mx);
    for (; k < seq; k++)
        sb_score_rows(K, ld, d, qp, mask, k, 1, S, mx);
    for (k = 0; k < seq; k++) {
        float *row = S + (ptrdiff_t)k * SB_ATT_QT;
        for (j = 0; j < SB_ATT_J; j++) {
            vf p = vf_exp_nonpos(vf_sub(vf_loadu(row + j * SB_VW), mx[j]));
            sum[j] = vf_add(sum[j], p);
            vf_storeu(row + j * SB_VW, p);
        }
    }
    for (j = 0; j < SB_ATT_J; j++)  /* >= 1: the maximum's own term is exp(0) */
        sum[j] = vf_div(vf_set1(1.0f), sum[j]);
    if (nq == SB_ATT_QT)
        sb_context(V, ld, d, seq, S, sum, out, m, 0);
    else
        sb_context(V, ld, d, seq, S, sum, out, m, 1);
}

/* ctx = float32 self-attention of qkv (see sb_attention_run); `tasks` tasks each use
 * sb_attention_scratch bytes of `scratch`. */
static void sb_attention(const float *qkv, float *ctx, const float *mask, ptrdiff_t ld, int heads,
                         int head_dim, int batch, int seq, unsigned char *scratch, int tasks, int threads) {
    sb_attention_run(sb_attention_item, (int)(((ptrdiff_t)seq + SB_ATT_QT - 1) / SB_ATT_QT),
                     sb_attention_scratch(seq, head_dim), qkv, ctx, mask, ld, heads, head_dim, batch,
                     seq, scratch, tasks, threads);
}

#endif /* SPARSEBENCH_ENCODER_OPS_H */
