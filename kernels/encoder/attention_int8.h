/* BERT self-attention with both products on AVX512-VNNI (u8 x s8 -> s32), for the int8 encoder;
 * compiled into the avx512vnni encoder module only.
 *
 * Same layout, orientation and job skeleton as the float32 kernel (encoder_ops.h): qkv is (3H, T),
 * features x tokens, head h of sequence b reads rows h*d.. of Q, K and V and columns b*seq.. ;
 * scores are keys x queries with the queries in vector lanes; ctx rows = V_h P / column sums.
 * One item is one (sequence, head). Its operands are quantized symmetrically, as the linear
 * layers' activations are:
 * (vnni.h's rounding, clamping and quads order):
 *   Q: per query, u8 = rint(q / sq) + 128, packed in quads (4 consecutive features of a query
 *      side by side, vnni.h) per tile of SB_AQ_QT queries: the u8 operand of vpdpbusd;
 *   K: per key, s8 = rint(k / sk), in quads over all keys: broadcast 4 features at a time;
 *      comp[k] = 128 * sum_f s8 undoes Q's zero point;
 *   V: per feature row (over the sequence's tokens), s8, rows as they are (4 consecutive keys
 *      of a row are one broadcast quad);
 *   P: exp(s - max) in (0, 1] as u8 = rint(255 p), packed in quads of 4 keys per query. The
 *      context is divided by the sum of these integers, so the weights it applies sum to 1.
 * Scores: s = (acc - comp[k]) * sk[k] * sq[q] + mask[k]. The maximum is always subtracted
 * (its key gets 255). A key whose mask is a large negative number gets 0; a query whose keys
 * are all masked attends to them uniformly, as float32 softmax does.
 */
#ifndef SPARSEBENCH_ATTENTION_INT8_H
#define SPARSEBENCH_ATTENTION_INT8_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "encoder_ops.h"
#include "vnni.h"

#define SB_AQ_J 2                        /* query vectors per tile */
#define SB_AQ_QT (16 * SB_AQ_J)          /* queries per tile */
#define SB_AQ_RB 8                       /* keys (scores) or V rows (context) per register tile */

/* keys padded to a multiple of 16 (whole vectors when quantizing K and V) */
SB_INLINE int sb_aq_keys(int seq) { return (seq + 15) / 16 * 16; }

/* Scratch of one task, carved in this order, every part 64-byte aligned. */
typedef struct {
    int8_t *kq;      /* d/4 quad-rows of keys x 4 bytes (ldk = 4 * keys) */
    float *sk;       /* keys */
    int32_t *comp;   /* keys */
    int8_t *vs;      /* d rows x keys */
    float *sv;       /* d */
    uint8_t *qq;     /* d/4 quad-rows of SB_AQ_QT queries x 4 bytes */
    float *sq;       /* SB_AQ_QT */
    float *s;        /* seq x SB_AQ_QT scores, then probabilities */
    uint8_t *pq;     /* keys/4 quad-rows of SB_AQ_QT queries x 4 bytes */
} sb_aq_scratch_t;

static inline ptrdiff_t sb_aq_round64(ptrdiff_t n) { return (n + 63) / 64 * 64; }

static inline ptrdiff_t sb_aq_layout(int seq, int d, uint8_t *base, sb_aq_scratch_t *s) {
    const ptrdiff_t keys = sb_aq_keys(seq);
    const ptrdiff_t sizes[9] = {d * keys, 4 * keys, 4 * keys, d * keys, 4 * (ptrdiff_t)d,
                                d * SB_AQ_QT, 4 * SB_AQ_QT, 4 * (ptrdiff_t)seq * SB_AQ_QT,
                                keys * SB_AQ_QT};
    void **parts[9] = {(void **)&s->kq, (void **)&s->sk, (void **)&s->comp, (void **)&s->vs,
                       (void **)&s->sv, (void **)&s->qq, (void **)&s->sq, (void **)&s->s,
                       (void **)&s->pq};
    ptrdiff_t off = 0;
    for (int i = 0; i < 9; i++) {
        if (base) *parts[i] = base + off;
        off += sb_aq_round64(sizes[i]);
    }
    return off;
}

/* Bytes of scratch each attention task needs. */
static inline ptrdiff_t sb_attention_int8_scratch(int seq, int head_dim) {
    sb_aq_scratch_t unused;
    return sb_aq_layout(seq, head_dim, NULL, &unused);
}

/* 1 / scale and scale for the largest |x| of each lane (an all-zero column gets scale 1) */
SB_INLINE vf sb_aq_inverse(vf amax, float *scale_out) {
    __mmask16 nz = _mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ);
    vf scale = _mm512_mask_mul_ps(_mm512_set1_ps(1.0f), nz, amax, _mm512_set1_ps(1.0f / 127));
    scale = _mm512_max_ps(scale, _mm512_set1_ps(1.17549435e-38f));
    _mm512_storeu_ps(scale_out, scale);
    return _mm512_div_ps(_mm512_set1_ps(1.0f), scale);
}

/* X (d x n valid columns of 16, stride ld) quantized per column into quads (quad-row g at
 * out + g * ldo, 16 columns of 4 bytes); u8 (+128) or s8; the column scales into `scale`, and
 * 128 * (column sum of the s8 values) into comp if not NULL. */
SB_INLINE void sb_aq_quantize_cols(const float *X, ptrdiff_t ld, int d, int n, int u8,
                                   uint8_t *out, ptrdiff_t ldo, float *scale, int32_t *comp) {
    const __mmask16 m = vm_first(n);
    vf amax = _mm512_setzero_ps();
    for (int f = 0; f < d; f++)
        amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(m, X + f * ld)));
    vf inv = sb_aq_inverse(amax, scale);
    vi sum = vi_zero();
    for (int g = 0; 4 * g < d; g++) {
        const float *x = X + 4 * g * ld;
        vi q0 = sb_quant16(_mm512_maskz_loadu_ps(m, x), inv, 0);
        vi q1 = sb_quant16(_mm512_maskz_loadu_ps(m, x + ld), inv, 0);
        vi q2 = sb_quant16(_mm512_maskz_loadu_ps(m, x + 2 * ld), inv, 0);
        vi q3 = sb_quant16(_mm512_maskz_loadu_ps(m, x + 3 * ld), inv, 0);
        sum = _mm512_add_epi32(sum, _mm512_add_epi32(_mm512_add_epi32(q0, q1), _mm512_add_epi32(q2, q3)));
        vi b = u8 ? sb_to_u8(q0, q1, q2, q3) : sb_to_s8(q0, q1, q2, q3);
        _mm512_storeu_si512((void *)(out + g * ldo), sb_to_quads(b));
    }
    if (comp) _mm512_storeu_si512((void *)comp, _mm512_slli_epi32(sum, 7));
}

/* Row f of V (seq keys, zero-padded to `keys`) as s8 with its own scale. */
static inline void sb_aq_quantize_row(const float *v, int seq, int keys, int8_t *out, float *scale) {
    vf amax = _mm512_setzero_ps();
    for (int k = 0; k < keys; k += 16)
        amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(vm_first(seq - k), v + k)));
    float a = _mm512_reduce_max_ps(amax);
    float s = a > 0 ? a / 127 : 1.0f;
    if (s < 1.17549435e-38f) s = 1.17549435e-38f;
    *scale = s;
    vf inv = _mm512_set1_ps(1.0f / s);
    for (int k = 0; k < keys; k += 16)
        _mm_storeu_si128((__m128i *)(out + k),
                         _mm512_cvtsepi32_epi8(sb_quant16(_mm512_maskz_loadu_ps(vm_first(seq - k), v + k), inv, 0)));
}

/* acc[r][j] = sum over quad-rows g < groups of the u8 quads at u + g * 4 * SB_AQ_QT + 64 j (vector
 * j of the tile) times the s8 quad at s + g * sg + r * sr, broadcast (row r). */
SB_INLINE void sb_aq_dot_tile(const uint8_t *u, const int8_t *s, ptrdiff_t sg, ptrdiff_t sr,
                              int groups, int R, vi acc[SB_AQ_RB][SB_AQ_J]) {
    int g, r, j;
    SB_TILE_ZERO(acc, R, SB_AQ_J, vi_zero());
    for (g = 0; g < groups; g++) {
        vi x[SB_AQ_J];
#pragma GCC unroll 2
        for (j = 0; j < SB_AQ_J; j++)
            x[j] = vi_loadu_reg(u + (ptrdiff_t)g * 4 * SB_AQ_QT + 64 * j);
#pragma GCC unroll 8
        for (r = 0; r < R; r++) {
            vi b = vi_set1_quad(s + g * sg + r * sr);
#pragma GCC unroll 2
            for (j = 0; j < SB_AQ_J; j++) acc[r][j] = vi_dpbusd(acc[r][j], x[j], b);
        }
    }
}

/* Score rows k0..k0+R-1 (keys) of the query tile, plus mask; mx: running maximum per lane. */
SB_INLINE void sb_aq_score_rows(const sb_aq_scratch_t *w, int d, int keys, const float *mask,
                                int k0, int R, vf *mx) {
    vi acc[SB_AQ_RB][SB_AQ_J];
    int r, j;
    sb_aq_dot_tile(w->qq, w->kq + 4 * k0, 4 * (ptrdiff_t)keys, 4, d / 4, R, acc);
#pragma GCC unroll 8
    for (r = 0; r < R; r++) {
        const int k = k0 + r;
        vf add = mask ? _mm512_set1_ps(mask[k]) : _mm512_setzero_ps();
        vi comp = vi_set1(w->comp[k]);
        vf sk = _mm512_set1_ps(w->sk[k]);
#pragma GCC unroll 2
        for (j = 0; j < SB_AQ_J; j++) {
            vf sc = _mm512_mul_ps(sk, _mm512_loadu_ps(w->sq + 16 * j));
            vf s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], comp)), sc, add);
            mx[j] = _mm512_max_ps(s, mx[j]);
            _mm512_storeu_ps(w->s + (ptrdiff_t)k * SB_AQ_QT + 16 * j, s);
        }
    }
}

/* ctx rows i0..i0+R-1 (stride ld) of the tile: rows of V times the packed P, times scale[j]
 * (1 / column sums) and V's row scale; `masked`: only the first columns are stored. */
SB_INLINE void sb_aq_context_rows(const sb_aq_scratch_t *w, int keys, int i0, int R,
                                  const vf *inv, float *out, ptrdiff_t ld, const __mmask16 *m,
                                  int masked) {
    vi acc[SB_AQ_RB][SB_AQ_J];
    int r, j;
    sb_aq_dot_tile(w->pq, w->vs + (ptrdiff_t)i0 * keys, 4, keys, keys / 4, R, acc);
#pragma GCC unroll 8
    for (r = 0; r < R; r++) {
        vf sv = _mm512_set1_ps(w->sv[i0 + r]);
#pragma GCC unroll 2
        for (j = 0; j < SB_AQ_J; j++) {
            vf y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][j]), _mm512_mul_ps(sv, inv[j]));
            float *o = out + (ptrdiff_t)(i0 + r) * ld + 16 * j;
            if (masked) _mm512_mask_storeu_ps(o, m[j], y);
            else _mm512_storeu_ps(o, y);
        }
    }
}

SB_INLINE void sb_aq_context(const sb_aq_scratch_t *w, int d, int keys, const vf *inv,
                             float *out, ptrdiff_t ld, const __mmask16 *m, int masked) {
    int i = 0;
    for (; d - i >= SB_AQ_RB; i += SB_AQ_RB)
        sb_aq_context_rows(w, keys, i, SB_AQ_RB, inv, out, ld, m, masked);
    for (; i < d; i++)
        sb_aq_context_rows(w, keys, i, 1, inv, out, ld, m, masked);
}

/* One query tile (queries q0.., nq of them) of an item whose K and V are quantized. */
static void sb_aq_tile(const sb_att_job_t *job, const sb_aq_scratch_t *w, const float *Q,
                       const float *mask, float *out, int q0, int nq) {
    const int d = job->head_dim, seq = job->seq, keys = sb_aq_keys(seq);
    const ptrdiff_t ld = job->ld;
    __mmask16 m[SB_AQ_J];
    vf mx[SB_AQ_J], inv[SB_AQ_J];
    vi sum[SB_AQ_J];
    int j, k, g;

    for (j = 0; j < SB_AQ_J; j++) {
        m[j] = vm_first(nq - 16 * j);
        mx[j] = _mm512_set1_ps(-INFINITY);
        sum[j] = vi_zero();
        sb_aq_quantize_cols(Q + q0 + 16 * j, ld, d, nq - 16 * j, 1, w->qq + 64 * j, 4 * SB_AQ_QT,
                            w->sq + 16 * j, NULL);
    }
    for (k = 0; seq - k >= SB_AQ_RB; k += SB_AQ_RB)
        sb_aq_score_rows(w, d, keys, mask, k, SB_AQ_RB, mx);
    for (; k < seq; k++)
        sb_aq_score_rows(w, d, keys, mask, k, 1, mx);
    /* P = rint(255 exp(s - max)) in quads of 4 keys; keys past seq are 0 */
    for (g = 0; 4 * g < keys; g++)
        for (j = 0; j < SB_AQ_J; j++) {
            vi p[4];
            for (int t = 0; t < 4; t++) {
                k = 4 * g + t;
                if (k < seq) {
                    vf e = vf_exp_nonpos(_mm512_sub_ps(_mm512_loadu_ps(w->s + (ptrdiff_t)k * SB_AQ_QT + 16 * j), mx[j]));
                    p[t] = sb_quant16(e, _mm512_set1_ps(255.0f), 0);
                } else {
                    p[t] = vi_zero();
                }
                sum[j] = _mm512_add_epi32(sum[j], p[t]);
            }
            /* 0..255: signed packs to s16 keep them, unsigned packs to u8 */
            vi b = _mm512_packus_epi16(_mm512_packs_epi32(p[0], p[1]), _mm512_packs_epi32(p[2], p[3]));
            _mm512_storeu_si512((void *)(w->pq + (ptrdiff_t)g * 4 * SB_AQ_QT + 64 * j), sb_to_quads(b));
        }
    for (j = 0; j < SB_AQ_J; j++)    /* sums >= 255: the maximum's own term */
        inv[j] = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_cvtepi32_ps(_mm512_max_epi32(sum[j], vi_set1(1))));
    if (nq == SB_AQ_QT)
        sb_aq_context(w, d, keys, inv, out + q0, ld, m, 0);
    else
        sb_aq_context(w, d, keys, inv, out + q0, ld, m, 1);
}

/* One (sequence, head): K and V quantized once, then every query tile. */
static void sb_aq_item(const sb_att_job_t *job, int item, unsigned char *scratch) {
    const int d = job->head_dim, seq = job->seq, keys = sb_aq_keys(seq);
    const ptrdiff_t ld = job->ld;
    const sb_att_item_t it = sb_att_item(job, item);
    sb_aq_scratch_t w;
    int k, i, q0;

    sb_aq_layout(seq, d, scratch, &w);
    for (k = 0; k < keys; k += 16)
        sb_aq_quantize_cols(it.K + k, ld, d, seq - k, 0, (uint8_t *)w.kq + 4 * k, 4 * (ptrdiff_t)keys,
                            w.sk + k, w.comp + k);
    for (i = 0; i < d; i++)
        sb_aq_quantize_row(it.V + i * ld, seq, keys, w.vs + (ptrdiff_t)i * keys, w.sv + i);
    for (q0 = 0; q0 < seq; q0 += SB_AQ_QT)
        sb_aq_tile(job, &w, it.Q, it.mask, it.out, q0, seq - q0 < SB_AQ_QT ? seq - q0 : SB_AQ_QT);
}

/* ctx = int8 self-attention of qkv (see sb_attention_run), head_dim a multiple of 4; `tasks`
 * tasks each use sb_attention_int8_scratch bytes of `scratch`. */
static void sb_attention_int8(const float *qkv, float *ctx, const float *mask, ptrdiff_t ld,
                              int heads, int head_dim, int batch, int seq, unsigned char *scratch,
                              int tasks, int threads) {
    sb_attention_run(sb_aq_item, 1, sb_attention_int8_scratch(seq, head_dim), qkv, ctx, mask, ld,
                     heads, head_dim, batch, seq, scratch, tasks, threads);
}

#endif /* SPARSEBENCH_ATTENTION_INT8_H */
