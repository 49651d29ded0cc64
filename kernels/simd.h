/* Vector helpers for the sparsebench SpMM kernels.
 *
 * One header, three implementations, chosen by the flags the including
 * module is compiled with (setup.py builds one extension per ISA):
 *   __AVX512F__           -> 16-lane __m512, mask registers for tails
 *   __AVX2__ && __FMA__   -> 8-lane __m256, maskload/maskstore for tails
 *   otherwise             -> 4-lane GCC vector extension (portable C)
 * Code that includes this header never runs unless the dispatcher has checked
 * at run time that the CPU has the ISA (see sparsebench/cpu.py).
 */
#ifndef SPARSEBENCH_SIMD_H
#define SPARSEBENCH_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* GELU(x) = x/2 (1 + erf(x / sqrt 2)), the exact (erf) form BERT uses, for the kernel epilogue.
 * erf from Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7): with z = |x|/sqrt 2 and
 * t = 1/(1 + p z), 1 - erf(z) = q = t (a1 + t (a2 + ... + t a5)) exp(-z^2), so
 * 1 + erf(x/sqrt 2) is q for x < 0 (no cancellation: tails stay accurate) and 2 - q otherwise.
 * exp(v) for v in [-87, 0]: v = k ln2 + r, |r| <= ln2/2, degree-6 Taylor polynomial times 2^k.
 * Measured against float64 erf over [-10, 10]: |error| < 5e-7. */
#define SB_GELU_P 0.3275911f
#define SB_GELU_A1 0.254829592f
#define SB_GELU_A2 -0.284496736f
#define SB_GELU_A3 1.421413741f
#define SB_GELU_A4 -1.453152027f
#define SB_GELU_A5 1.061405429f

#if defined(__AVX512F__)
#include <immintrin.h>
#define SB_VW 16
#define SB_ISA_NAME "avx512"
typedef __m512 vf;
typedef __mmask16 vmask;
static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_set1(float a) { return _mm512_set1_ps(a); }
static inline vf vf_loadu(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_storeu(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
/* mask with the first n lanes set (n may be <= 0 or >= SB_VW) */
static inline vmask vm_first(int n) {
    if (n <= 0) return 0;
    if (n >= SB_VW) return (vmask)0xFFFF;
    return (vmask)((1u << n) - 1u);
}
static inline vf vf_maskloadu(const float *p, vmask m) { return _mm512_maskz_loadu_ps(m, p); }
static inline void vf_maskstoreu(float *p, vmask m, vf v) { _mm512_mask_storeu_ps(p, m, v); }

static inline vf vf_exp_neg(vf v) {           /* exp(v) for v <= 0 */
    v = _mm512_max_ps(v, _mm512_set1_ps(-87.0f));
    vf k = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), v);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    vf p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}
static inline vf vf_gelu(vf x) {
    vf z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678f));
    vf t = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_fmadd_ps(z, _mm512_set1_ps(SB_GELU_P), _mm512_set1_ps(1.0f)));
    vf s = _mm512_fmadd_ps(_mm512_set1_ps(SB_GELU_A5), t, _mm512_set1_ps(SB_GELU_A4));
    s = _mm512_fmadd_ps(s, t, _mm512_set1_ps(SB_GELU_A3));
    s = _mm512_fmadd_ps(s, t, _mm512_set1_ps(SB_GELU_A2));
    s = _mm512_fmadd_ps(s, t, _mm512_set1_ps(SB_GELU_A1));
    vf q = _mm512_mul_ps(_mm512_mul_ps(s, t), vf_exp_neg(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z)));
    __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    vf onep = _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(2.0f), q), q);
    return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), onep);
}

#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SB_VW 8
#define SB_ISA_NAME "avx2"
typedef __m256 vf;
typedef __m256i vmask;
static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_set1(float a) { return _mm256_set1_ps(a); }
static inline vf vf_loadu(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_storeu(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vmask vm_first(int n) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes);
}
static inline vf vf_maskloadu(const float *p, vmask m) { return _mm256_maskload_ps(p, m); }
static inline void vf_maskstoreu(float *p, vmask m, vf v) { _mm256_maskstore_ps(p, m, v); }

static inline vf vf_exp_neg(vf v) {           /* exp(v) for v <= 0 */
    v = _mm256_max_ps(v, _mm256_set1_ps(-87.0f));
    vf k = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504f)),
                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vf r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), v);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    vf p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^k for k in [-126, 0]: build the float's exponent field */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
static inline vf vf_gelu(vf x) {
    vf z = _mm256_mul_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), _mm256_set1_ps(0.70710678f));
    vf t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(z, _mm256_set1_ps(SB_GELU_P), _mm256_set1_ps(1.0f)));
    vf s = _mm256_fmadd_ps(_mm256_set1_ps(SB_GELU_A5), t, _mm256_set1_ps(SB_GELU_A4));
    s = _mm256_fmadd_ps(s, t, _mm256_set1_ps(SB_GELU_A3));
    s = _mm256_fmadd_ps(s, t, _mm256_set1_ps(SB_GELU_A2));
    s = _mm256_fmadd_ps(s, t, _mm256_set1_ps(SB_GELU_A1));
    vf q = _mm256_mul_ps(_mm256_mul_ps(s, t), vf_exp_neg(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), z), z)));
    vf neg = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
    vf onep = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), q), q, neg);
    return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), onep);
}

#else
#define SB_VW 4
#define SB_ISA_NAME "generic"
typedef float vf __attribute__((vector_size(16), aligned(4)));
typedef int vmask; /* number of valid lanes */
static inline vf vf_zero(void) { vf z = {0.0f, 0.0f, 0.0f, 0.0f}; return z; }
static inline vf vf_set1(float a) { vf v = {a, a, a, a}; return v; }
static inline vf vf_loadu(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vf_storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vf_fmadd(vf a, vf b, vf c) { return a * b + c; }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vmask vm_first(int n) { return n < 0 ? 0 : (n > SB_VW ? SB_VW : n); }
static inline vf vf_maskloadu(const float *p, vmask m) {
    vf v = vf_zero();
    for (int i = 0; i < m; i++) v[i] = p[i];
    return v;
}
static inline void vf_maskstoreu(float *p, vmask m, vf v) {
    for (int i = 0; i < m; i++) p[i] = v[i];
}

static inline vf vf_gelu(vf x) {
    vf y;
    for (int i = 0; i < SB_VW; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678f));
    return y;
}
#endif

static inline void sb_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }

/* X vectors are loaded once and used by every row of the block. Left alone, GCC folds the
 * load into each row's FMA as a memory operand instead (4 loads instead of 1 for a 4-row
 * block: the 4x4 kernel ran at 60% of the 4x1 kernel on the same data, load-port bound).
 * Passing the value through an empty asm statement pins it in a register. */
#if defined(__AVX512F__)
#define SB_IN_REGISTER(v) __asm__("" : "+v"(v))
#elif defined(__x86_64__) || defined(__i386__)
#define SB_IN_REGISTER(v) __asm__("" : "+x"(v))
#else
#define SB_IN_REGISTER(v) ((void)0)
#endif
static inline vf vf_loadu_reg(const float *p) { vf v = vf_loadu(p); SB_IN_REGISTER(v); return v; }
static inline vf vf_maskloadu_reg(const float *p, vmask m) {
    vf v = vf_maskloadu(p, m);
    SB_IN_REGISTER(v);
    return v;
}

#endif /* SPARSEBENCH_SIMD_H */
