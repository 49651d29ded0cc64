/* Vector operations the encoder kernels need beyond ../simd.h: arithmetic, sqrt, max and an
 * accurate exp for the softmax. Same three implementations as simd.h, chosen by the flags the
 * including module is compiled with.
 *
 * vf_exp_nonpos(v) = exp(v) for v <= 0 (the softmax subtracts the maximum first):
 * v = k ln2 + r with k = round(v / ln2) and |r| <= ln2/2 (ln2 split in two parts, so k ln2 is
 * exact to float32), exp(r) by its degree-7 Taylor polynomial (truncation error < 5e-9
 * relative), times 2^k. Within 2 ulp of the exact value over [-87, 0] (tests compare it with
 * float64 exp); arguments below -87 (exp < 1.7e-38) and -inf give exactly 0, NaN gives NaN.
 */
#ifndef SPARSEBENCH_ENCODER_VECMATH_H
#define SPARSEBENCH_ENCODER_VECMATH_H

#include "../simd.h"

#define SB_EXP_MIN -87.0f
#define SB_LOG2E 1.44269504f
#define SB_LN2_HI 0.693359375f
#define SB_LN2_LO -2.12194440e-4f

#if defined(__AVX512F__)
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline vf vf_sqrt(vf a) { return _mm512_sqrt_ps(a); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }

static inline vf vf_exp_nonpos(vf v) {
    __mmask16 keep = _mm512_cmp_ps_mask(v, _mm512_set1_ps(SB_EXP_MIN), _CMP_NLT_UQ);
    v = _mm512_max_ps(_mm512_set1_ps(SB_EXP_MIN), v);         /* NaN stays NaN */
    vf k = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(SB_LOG2E)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm512_fnmadd_ps(k, _mm512_set1_ps(SB_LN2_HI), v);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(SB_LN2_LO), r);
    vf p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(keep, p, k);
}

#elif defined(__AVX2__) && defined(__FMA__)
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline vf vf_sqrt(vf a) { return _mm256_sqrt_ps(a); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }

static inline vf vf_exp_nonpos(vf v) {
    vf keep = _mm256_cmp_ps(v, _mm256_set1_ps(SB_EXP_MIN), _CMP_NLT_UQ);
    v = _mm256_max_ps(_mm256_set1_ps(SB_EXP_MIN), v);         /* NaN stays NaN */
    vf k = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(SB_LOG2E)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm256_fnmadd_ps(k, _mm256_set1_ps(SB_LN2_HI), v);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(SB_LN2_LO), r);
    vf p = _mm256_set1_ps(1.0f / 5040);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^k for k in [-126, 0]: the float whose exponent field is k + 127 */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(keep, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

#else
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_div(vf a, vf b) { return a / b; }
static inline vf vf_sqrt(vf a) {
    for (int i = 0; i < SB_VW; i++) a[i] = sqrtf(a[i]);
    return a;
}
static inline vf vf_max(vf a, vf b) {         /* b if either is NaN, as maxps */
    for (int i = 0; i < SB_VW; i++) a[i] = a[i] > b[i] ? a[i] : b[i];
    return a;
}
static inline vf vf_exp_nonpos(vf v) {
    for (int i = 0; i < SB_VW; i++) v[i] = v[i] < SB_EXP_MIN ? 0.0f : expf(v[i]);
    return v;
}
#endif

#endif /* SPARSEBENCH_ENCODER_VECMATH_H */
