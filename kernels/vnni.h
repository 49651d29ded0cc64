/* AVX512-VNNI helpers for the int8 kernels: the SpMM (kernels/spmm_int8.pyx.tp) and the int8
 * self-attention (kernels/encoder/attention_int8.h).
 *
 * Quantized operands: weights s8 with a scale per row; activations u8 = q + 128 with
 * q = clamp(rint(x / scale[n]), -127, 127) and a scale per column n of X (per token; zero point
 * 128, so the kernels subtract 128 * (row sum of the weights) once per output, and scale
 * output (r, n) by rscale[r] * scale[n]). vpdpbusd multiplies 4 adjacent u8 by 4 adjacent s8 and adds the 4 products to a
 * 32-bit lane (wrapping, never saturating), so each lane needs the 4 K values of one column of
 * X side by side ("quads"). Two packed layouts of X provide them:
 *
 *   quads (blocks 4x4, 1x4): quad-row g holds X rows 4g..4g+3, column c at bytes 4c..4c+3
 *        (rows past K are zero points); a block's 4 K values are one load away.
 *   rows (blocks 4x1, 8x1, 16x1, grouped 4 to a quad): row k of X as u8, each 64-column chunk in the
 *        byte order of _mm512_packs (byte 16L + 4j + i holds column 16j + 4L + i). Interleaving
 *        any 4 such rows with unpacklo/hi (sb_interleave4) undoes that order: the 4 vectors it
 *        returns hold the quads of columns 0-15, 16-31, 32-47 and 48-63 of the chunk (tiles of
 *        32 and 16 columns take half or a quarter of them: 8x1 and 16x1 blocks, and the narrow
 *        4x1 and 8x1 tiles for a few tokens).
 *
 * Both layouts pad N (to 16 columns for quads, 64 for rows) with zero points.
 */
#ifndef SPARSEBENCH_VNNI_H
#define SPARSEBENCH_VNNI_H

#if !defined(__AVX512VNNI__) || !defined(__AVX512BW__)
#error "vnni.h needs -mavx512f -mavx512bw -mavx512vnni"
#endif

#include <float.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <immintrin.h>
#include "simd.h"

typedef __m512i vi;

static inline vi vi_zero(void) { return _mm512_setzero_si512(); }
static inline vi vi_set1(int32_t a) { return _mm512_set1_epi32(a); }
/* the 4 s8 weights at p, broadcast to every lane */
static inline vi vi_set1_quad(const int8_t *p) {
    int32_t q;
    memcpy(&q, p, 4);
    return _mm512_set1_epi32(q);
}
static inline vi vi_dpbusd(vi acc, vi x_u8, vi w_s8) { return _mm512_dpbusd_epi32(acc, x_u8, w_s8); }
/* loads pinned in a register (see SB_IN_REGISTER in simd.h): one X vector serves every row */
static inline vi vi_loadu_reg(const uint8_t *p) {
    vi v = _mm512_loadu_si512((const void *)p);
    SB_IN_REGISTER(v);
    return v;
}
static inline vi vi_maskloadu_reg(const uint8_t *p, vmask m) {
    vi v = _mm512_maskz_loadu_epi32(m, (const void *)p);
    SB_IN_REGISTER(v);
    return v;
}

/* The quads of 4 rows-layout rows (64 columns each): q0 = columns 0-15, ..., q3 = 48-63. */
static inline void sb_interleave4(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2,
                                  const uint8_t *p3, vi *q0, vi *q1, vi *q2, vi *q3) {
    vi r0 = _mm512_loadu_si512((const void *)p0), r1 = _mm512_loadu_si512((const void *)p1);
    vi r2 = _mm512_loadu_si512((const void *)p2), r3 = _mm512_loadu_si512((const void *)p3);
    vi t0 = _mm512_unpacklo_epi8(r0, r1), t1 = _mm512_unpackhi_epi8(r0, r1);
    vi t2 = _mm512_unpacklo_epi8(r2, r3), t3 = _mm512_unpackhi_epi8(r2, r3);
    *q0 = _mm512_unpacklo_epi16(t0, t2);
    *q1 = _mm512_unpackhi_epi16(t0, t2);
    *q2 = _mm512_unpacklo_epi16(t1, t3);
    *q3 = _mm512_unpackhi_epi16(t1, t3);
}

/* Half of sb_interleave4 for tiles of 32 columns: the quads of columns 32 hi .. 32 hi + 31
 * of the chunk, qa and qb (q0, q1 or q2, q3); four shuffles instead of eight. */
static inline void sb_interleave4_half(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2,
                                       const uint8_t *p3, int hi, vi *qa, vi *qb) {
    vi r0 = _mm512_loadu_si512((const void *)p0), r1 = _mm512_loadu_si512((const void *)p1);
    vi r2 = _mm512_loadu_si512((const void *)p2), r3 = _mm512_loadu_si512((const void *)p3);
    vi ta = hi ? _mm512_unpackhi_epi8(r0, r1) : _mm512_unpacklo_epi8(r0, r1);
    vi tb = hi ? _mm512_unpackhi_epi8(r2, r3) : _mm512_unpacklo_epi8(r2, r3);
    *qa = _mm512_unpacklo_epi16(ta, tb);
    *qb = _mm512_unpackhi_epi16(ta, tb);
}

/* A quarter of sb_interleave4 for tiles of 16 columns: quad vector q (columns 16 q .. 16 q + 15). */
static inline vi sb_interleave4_quarter(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2,
                                        const uint8_t *p3, int q) {
    vi r0 = _mm512_loadu_si512((const void *)p0), r1 = _mm512_loadu_si512((const void *)p1);
    vi r2 = _mm512_loadu_si512((const void *)p2), r3 = _mm512_loadu_si512((const void *)p3);
    vi ta = q >> 1 ? _mm512_unpackhi_epi8(r0, r1) : _mm512_unpacklo_epi8(r0, r1);
    vi tb = q >> 1 ? _mm512_unpackhi_epi8(r2, r3) : _mm512_unpacklo_epi8(r2, r3);
    return q & 1 ? _mm512_unpackhi_epi16(ta, tb) : _mm512_unpacklo_epi16(ta, tb);
}

/* Epilogue: float32 (acc - comp) * (rscale * xscale) (+ bias), one rounding each for the
 * conversion, the scale product and the multiply(-add). comp = 128 * (row sum of the s8
 * weights) undoes the zero point; rscale is the row's, xscale the 16 columns'. */
static inline vf sb_dequant(vi acc, vi comp, vf rscale, vf xscale) {
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, comp)), _mm512_mul_ps(rscale, xscale));
}
static inline vf sb_dequant_bias(vi acc, vi comp, vf rscale, vf xscale, vf bias) {
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc, comp)), _mm512_mul_ps(rscale, xscale), bias);
}

/* -- quantize and pack X (K x N float32, rows ldx floats apart) ------------------------------
 * inv[n] = 1 / scale[n] per column (inv holds npad floats). Two modes. Dynamic (scale[n] =
 * max |X[:, n]| / 127, after sb_colmax_bits found X finite): every |x * inv| <= 127.5, so
 * rint and the saturating packs need no clamp. Calibrated (one given scale): x * inv is
 * capped at 127 before the conversion (which turns anything beyond 2^31, and NaN, into
 * INT_MIN), -128 is lifted to -127, and the largest |x| is tracked so that the caller can
 * refuse inf and NaN. */

/* The dynamic scale of a token whose largest |x| is amax (finite): amax / 127, FLT_MIN at
 * least, 1 for a token of zeros; and the inverse the packers multiply by. Every quantizer of
 * the int8 linear layers' activations (the int8 module's quantize and quantize_tokens, the
 * int8 encoder's LayerNorm) uses these two; int8 attention quantizes Q, K, V and P by its own
 * rules (attention_int8.h). */
static inline float sb_dynamic_scale(float amax) {
    if (!(amax > 0)) return 1.0f;
    double s = amax / 127.0;
    return (float)(s > FLT_MIN ? s : FLT_MIN);
}
static inline float sb_inverse_scale(float scale) { return (float)(1.0 / scale); }

/* |x| as float bits: ordered like |x| for finite x, >= 0x7f800000 for inf and NaN */
static inline vi sb_absbits(vf x) {
    return _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff));
}
/* rint(x * inv) as s32 (ties to even); capped at 127 when calibrated */
static inline vi sb_quant16(vf x, vf inv, int calibrated) {
    vf v = _mm512_mul_ps(x, inv);
    if (calibrated)
        v = _mm512_min_ps(v, _mm512_set1_ps(127.0f));
    return _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
/* 4 vectors of s32 -> 64 s8 = clamp(q, -127, 127); lane L of the result holds elements
 * 4L..4L+3 of q0, then of q1, q2 and q3 */
static inline vi sb_to_s8(vi q0, vi q1, vi q2, vi q3) {
    vi b = _mm512_packs_epi16(_mm512_packs_epi32(q0, q1), _mm512_packs_epi32(q2, q3));
    return _mm512_max_epi8(b, _mm512_set1_epi8(-127));
}
/* sb_to_s8 + 128: the u8 operand */
static inline vi sb_to_u8(vi q0, vi q1, vi q2, vi q3) {
    return _mm512_xor_si512(sb_to_s8(q0, q1, q2, q3), _mm512_set1_epi8((char)0x80));
}
/* The bytes of sb_to_s8/sb_to_u8 (byte 4t + i of each 16-byte lane: element i of vector t) in
 * quads order: element c of vector t at byte 4c + t. */
static inline vi sb_to_quads(vi packed) {
    return _mm512_shuffle_epi8(packed, _mm512_set4_epi32(0x0F0B0703, 0x0E0A0602, 0x0D090501, 0x0C080400));
}
/* 16 floats at p, of which n (may be <= 0 or >= 16) are valid; the rest read as 0 */
static inline vf sb_load16(const float *p, int n) {
    return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(vm_first(n), p);
}

/* Largest |x| (as bits, see sb_absbits) of each of the N columns of X over rows k0..k1, into
 * out[0..N) (whole vectors are stored, up to N rounded up to 16). Rows are read in order, 128
 * columns at a time, so a task streams through its rows like the packers do. */
static void sb_colmax_bits(const float *X, ptrdiff_t ldx, int k0, int k1, int N, uint32_t *out) {
    for (int c = 0; c < N; c += 128) {
        int w = N - c < 128 ? N - c : 128;
        vi b[8];
        for (int j = 0; j < 8; j++)
            b[j] = vi_zero();
        for (int k = k0; k < k1; k++) {
            const float *x = X + (ptrdiff_t)k * ldx + c;
            for (int j = 0; j < 8; j++)
                if (16 * j < w)
                    b[j] = _mm512_max_epu32(b[j], sb_absbits(sb_load16(x + 16 * j, w - 16 * j)));
        }
        for (int j = 0; 16 * j < w; j++)
            _mm512_storeu_si512((void *)(out + c + 16 * j), b[j]);
    }
}

/* Largest |x| (as bits, see sb_absbits) of x[0..n): a token's row of token-major X. */
static inline uint32_t sb_absmax_bits(const float *x, int n) {
    vi b0 = vi_zero(), b1 = vi_zero();
    int c = 0;
    for (; c + 32 <= n; c += 32) {
        b0 = _mm512_max_epu32(b0, sb_absbits(_mm512_loadu_ps(x + c)));
        b1 = _mm512_max_epu32(b1, sb_absbits(_mm512_loadu_ps(x + c + 16)));
    }
    for (; c < n; c += 16)
        b0 = _mm512_max_epu32(b0, sb_absbits(sb_load16(x + c, n - c)));
    return _mm512_reduce_max_epu32(_mm512_max_epu32(b0, b1));
}

/* 64 u8 from 4 vectors of floats and their inverse scales (see sb_to_u8 for the order);
 * tracks |x| if calibrated */
static inline vi sb_quant64(vf v0, vf v1, vf v2, vf v3, vf i0, vf i1, vf i2, vf i3, vi *bits,
                            int calibrated) {
    if (calibrated)
        *bits = _mm512_max_epu32(_mm512_max_epu32(*bits, _mm512_max_epu32(sb_absbits(v0), sb_absbits(v1))),
                                 _mm512_max_epu32(sb_absbits(v2), sb_absbits(v3)));
    return sb_to_u8(sb_quant16(v0, i0, calibrated), sb_quant16(v1, i1, calibrated),
                    sb_quant16(v2, i2, calibrated), sb_quant16(v3, i3, calibrated));
}

/* Rows k0..k1 of X into the rows layout (out row k at out + k * ldo, npad columns, npad a
 * multiple of 64); returns the largest |x| seen, as bits (calibrated mode; else 0). */
static inline uint32_t sb_pack_rows(const float *X, ptrdiff_t ldx, int k0, int k1, int N, int npad,
                                    const float *inv, uint8_t *out, ptrdiff_t ldo, int calibrated) {
    vi bits = vi_zero();
    for (int k = k0; k < k1; k++) {
        const float *x = X + (ptrdiff_t)k * ldx;
        uint8_t *o = out + (ptrdiff_t)k * ldo;
        int c = 0;
        for (; c + 64 <= N; c += 64)        /* whole chunks, then the padded tail */
            _mm512_storeu_si512((void *)(o + c), sb_quant64(
                _mm512_loadu_ps(x + c), _mm512_loadu_ps(x + c + 16), _mm512_loadu_ps(x + c + 32),
                _mm512_loadu_ps(x + c + 48), _mm512_loadu_ps(inv + c), _mm512_loadu_ps(inv + c + 16),
                _mm512_loadu_ps(inv + c + 32), _mm512_loadu_ps(inv + c + 48), &bits, calibrated));
        for (; c < npad; c += 64)
            _mm512_storeu_si512((void *)(o + c), sb_quant64(
                sb_load16(x + c, N - c), sb_load16(x + c + 16, N - c - 16), sb_load16(x + c + 32, N - c - 32),
                sb_load16(x + c + 48, N - c - 48), _mm512_loadu_ps(inv + c), _mm512_loadu_ps(inv + c + 16),
                _mm512_loadu_ps(inv + c + 32), _mm512_loadu_ps(inv + c + 48), &bits, calibrated));
    }
    return _mm512_reduce_max_epu32(bits);
}

/* Quad-rows g0..g1 (X rows 4 g0 .. 4 g1, rows >= K read as 0) into the quads layout (out
 * quad-row g at out + g * ldo, npad columns of 4 bytes, npad a multiple of 16); returns the
 * largest |x| seen, as bits (calibrated mode; else 0). */
static inline uint32_t sb_pack_quads(const float *X, ptrdiff_t ldx, int K, int g0, int g1, int N,
                                     int npad, const float *inv, uint8_t *out, ptrdiff_t ldo,
                                     int calibrated) {
    vi bits = vi_zero();
    for (int g = g0; g < g1; g++) {
        const float *x[4];
        int n[4];
        for (int t = 0; t < 4; t++) {          /* rows past K: no valid columns */
            x[t] = X + (ptrdiff_t)(4 * g + t < K ? 4 * g + t : 0) * ldx;
            n[t] = 4 * g + t < K ? N : 0;
        }
        uint8_t *o = out + (ptrdiff_t)g * ldo;
        int c = 0;
        if (4 * g + 3 < K)                     /* whole vectors of 4 rows, then the rest */
            for (; c + 16 <= N; c += 16) {
                vf i = _mm512_loadu_ps(inv + c);
                _mm512_storeu_si512((void *)(o + 4 * (ptrdiff_t)c), sb_to_quads(sb_quant64(
                    _mm512_loadu_ps(x[0] + c), _mm512_loadu_ps(x[1] + c), _mm512_loadu_ps(x[2] + c),
                    _mm512_loadu_ps(x[3] + c), i, i, i, i, &bits, calibrated)));
            }
        for (; c < npad; c += 16) {
            vf i = _mm512_loadu_ps(inv + c);
            _mm512_storeu_si512((void *)(o + 4 * (ptrdiff_t)c), sb_to_quads(sb_quant64(
                sb_load16(x[0] + c, n[0] - c), sb_load16(x[1] + c, n[1] - c), sb_load16(x[2] + c, n[2] - c),
                sb_load16(x[3] + c, n[3] - c), i, i, i, i, &bits, calibrated)));
        }
    }
    return _mm512_reduce_max_epu32(bits);
}

/* -- the same from token-major X (N x K): no transposed copy of the floats ----------------------
 * Each token's 16 features are quantized with its own scale (a broadcast) and narrowed to s8 in
 * registers; only the bytes are transposed, through a 4 KiB scratch in L1, into the layouts
 * above: bit for bit what sb_pack_rows / sb_pack_quads write from X. */

/* v[r] = lane j: s8 features 0..15 of token 16 j + r. In-lane 16x16 byte transpose: lane j of
 * v[k] becomes tokens 16 j + 0..15 of feature k. */
static inline void sb_transpose16_bytes(vi v[16]) {
    vi a[16], b[16];
    for (int p = 0; p < 8; p++) {            /* pairs of tokens: features 0-7, 8-15 */
        a[p] = _mm512_unpacklo_epi8(v[2 * p], v[2 * p + 1]);
        a[8 + p] = _mm512_unpackhi_epi8(v[2 * p], v[2 * p + 1]);
    }
    for (int h = 0; h < 2; h++)              /* 4 tokens: features 8h + 4e + 0..3 */
        for (int q = 0; q < 4; q++) {
            b[8 * h + 2 * q] = _mm512_unpacklo_epi16(a[8 * h + 2 * q], a[8 * h + 2 * q + 1]);
            b[8 * h + 2 * q + 1] = _mm512_unpackhi_epi16(a[8 * h + 2 * q], a[8 * h + 2 * q + 1]);
        }
    for (int h = 0; h < 2; h++)              /* 8 tokens: features 8h + 4e + 2f + 0..1 */
        for (int m = 0; m < 2; m++)
            for (int e = 0; e < 2; e++) {
                a[8 * h + 4 * m + 2 * e] = _mm512_unpacklo_epi32(b[8 * h + 4 * m + e], b[8 * h + 4 * m + 2 + e]);
                a[8 * h + 4 * m + 2 * e + 1] = _mm512_unpackhi_epi32(b[8 * h + 4 * m + e], b[8 * h + 4 * m + 2 + e]);
            }
    for (int h = 0; h < 2; h++)              /* 16 tokens: feature 8h + 4e + 2f + 0, 1 */
        for (int e = 0; e < 2; e++)
            for (int f = 0; f < 2; f++) {
                v[8 * h + 4 * e + 2 * f] = _mm512_unpacklo_epi64(a[8 * h + 2 * e + f], a[8 * h + 4 + 2 * e + f]);
                v[8 * h + 4 * e + 2 * f + 1] = _mm512_unpackhi_epi64(a[8 * h + 2 * e + f], a[8 * h + 4 + 2 * e + f]);
            }
}

/* s8 -> the u8 operand, as sb_to_u8 */
static inline vi sb_s8_to_u8(vi b) {
    return _mm512_xor_si512(_mm512_max_epi8(b, _mm512_set1_epi8(-127)), _mm512_set1_epi8((char)0x80));
}

/* Tokens 0..ntok (ntok <= 64; rows of xt, ldxt floats apart) and features 0..kc (kc <= 64) of
 * token-major X, quantized with the tokens' inverse scales inv[0..ntok) into the rows layout
 * (quads 0: out + k * ldo is feature k's 64-column chunk; all 64 columns are written, zero points
 * past ntok) or the quads layout (quads 1: out + g * ldo + 4 c is token c of quad-row g;
 * columns up to `width`, a multiple of 16). Returns the largest |x| seen, as bits (calibrated
 * mode; else 0). */
static inline uint32_t sb_pack_tokens(const float *xt, ptrdiff_t ldxt, int ntok, int kc, const float *inv,
                                      int quads, int width, uint8_t *out, ptrdiff_t ldo, int calibrated) {
    /* s8 of token t, features 16 b..16 b + 15 (block b), where the transposes below load them */
    __attribute__((aligned(64))) int8_t scratch[4][1024];
    vi bits = vi_zero();
    int blocks = (kc + 15) / 16;
    for (int t = 0; t < 64; t++) {
        int at = quads ? (t >> 4) * 256 + (t & 3) * 64 + ((t >> 2) & 3) * 16 : (t & 15) * 64 + (t >> 4) * 16;
        vf inv_t = _mm512_set1_ps(t < ntok ? inv[t] : 1.0f);
        for (int b = 0; b < blocks; b++) {
            __m128i q = _mm_setzero_si128();
            if (t < ntok) {
                vf x = sb_load16(xt + (ptrdiff_t)t * ldxt + 16 * b, kc - 16 * b);
                if (calibrated)
                    bits = _mm512_max_epu32(bits, sb_absbits(x));
                q = _mm512_cvtsepi32_epi8(sb_quant16(x, inv_t, calibrated));
            }
            _mm_store_si128((__m128i *)(scratch[b] + at), q);
        }
    }
    if (!quads) {
        /* dword 4 L + j of a row = lane j's dword L: the _mm512_packs byte order of sb_to_u8 */
        const vi order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        for (int b = 0; b < blocks; b++) {
            vi v[16];
            for (int r = 0; r < 16; r++)
                v[r] = _mm512_load_si512((const void *)(scratch[b] + 64 * r));
            sb_transpose16_bytes(v);
            for (int k = 0; k < 16 && 16 * b + k < kc; k++)
                _mm512_storeu_si512((void *)(out + (ptrdiff_t)(16 * b + k) * ldo),
                                    sb_s8_to_u8(_mm512_permutexvar_epi32(order, v[k])));
        }
    } else {
        for (int b = 0; b < blocks; b++)
            for (int c = 0; c < width; c += 16) {
                /* lane L of A, B, C, D: tokens c + 4 L + 0, 1, 2, 3 */
                const int8_t *s = scratch[b] + c * 16;
                vi A = _mm512_load_si512((const void *)s), B = _mm512_load_si512((const void *)(s + 64));
                vi C = _mm512_load_si512((const void *)(s + 128)), D = _mm512_load_si512((const void *)(s + 192));
                vi ab0 = _mm512_unpacklo_epi32(A, B), ab1 = _mm512_unpackhi_epi32(A, B);
                vi cd0 = _mm512_unpacklo_epi32(C, D), cd1 = _mm512_unpackhi_epi32(C, D);
                vi q[4] = {_mm512_unpacklo_epi64(ab0, cd0), _mm512_unpackhi_epi64(ab0, cd0),
                           _mm512_unpacklo_epi64(ab1, cd1), _mm512_unpackhi_epi64(ab1, cd1)};
                for (int g = 0; g < 4 && 16 * b + 4 * g < kc; g++)
                    _mm512_storeu_si512((void *)(out + (ptrdiff_t)(4 * b + g) * ldo + 4 * (ptrdiff_t)c), sb_s8_to_u8(q[g]));
            }
    }
    return _mm512_reduce_max_epu32(bits);
}

#endif /* SPARSEBENCH_VNNI_H */
