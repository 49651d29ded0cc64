/* Vector math of every sparsebench kernel (SpMM, encoder ops): loads, stores, arithmetic, exp
 * and GELU.
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

/* vf_exp_nonpos(v) = exp(v) for v <= 0 (the softmax subtracts the maximum first): v = k ln2 + r
 * with k = round(v / ln2) and |r| <= ln2/2 (ln2 split in two parts, so k ln2 is exact to
 * float32), exp(r) by its degree-7 Taylor polynomial (truncation error < 5e-9
 * relative), times 2^k. Within 2 ulp of the exact value over [-87, 0] (tests compare it with
 * float64 exp); arguments below -87 (exp < 1.7e-38) and -inf give exactly 0, NaN gives NaN. */
#define SB_EXP_MIN -87.0f
#define SB_LOG2E 1.44269504f
#define SB_LN2_HI 0.693359375f
#define SB_LN2_LO -2.12194440e-4f

/* GELU(x) = x/2 (1 + erf(x / sqrt 2)), the exact (erf) form BERT uses (vf_gelu, below the three
 * implementations). With t = |x|/sqrt 2, erfc(t) = 1 - erf(t) is a rational function r(t) =
 * P(t)/Q(t), P of degree 5 and Q of degree 8 (Q(0) = 1), fitted for sparsebench to float64 erfc
 * over [0, 4] (linearized least squares, reweighted towards the largest errors: |r - erfc| <=
 * 6.5e-8 there), and 0 from t = 3.9 on (erfc(3.9) = 3.5e-8; P turns negative at 3.97). 1 +
 * erf(x/sqrt 2) is r for x < 0 (no cancellation: the error stays within 2e-7 in absolute terms,
 * GELU never changes sign) and 2 - r otherwise. Against float64 erf GELU: within 4e-7 max(1,
 * |GELU(x)|) (tests); GELU(inf) = inf, GELU(-inf) = NaN (-inf times 0), NaN stays NaN. 13 FMAs
 * and a division: the GELU op ran 1.33x faster than with the exp-based form it replaced
 * (Abramowitz & Stegun 7.1.26 times exp(-t^2)), at the same accuracy. vf_gelu evaluates P and
 * Q in u = |x| = sqrt(2) t, and P halved, the coefficients folded at compile time (SB_GELU_P,
 * SB_GELU_Q), so that s = r / 2 and GELU(x) = x s for x < 0, x (1 - s) otherwise: two
 * multiplies fewer than scaling t and x, 1.16x faster (an L1 loop, one core, AVX-512), the
 * same accuracy. */
#define SB_ERFC_END 3.9f
#define SB_ERFC_P0 0.9999999403953552f
#define SB_ERFC_P1 -1.3521544933319092f
#define SB_ERFC_P2 0.7365425825119019f
#define SB_ERFC_P3 -0.20189246535301208f
#define SB_ERFC_P4 0.02782774530351162f
#define SB_ERFC_P5 -0.0015418517868965864f
#define SB_ERFC_Q1 -0.2237825095653534f
#define SB_ERFC_Q2 0.48418858647346497f
#define SB_ERFC_Q3 -0.03301046043634415f
#define SB_ERFC_Q4 0.08053819090127945f
#define SB_ERFC_Q5 0.00576800387352705f
#define SB_ERFC_Q6 0.014714083634316921f
#define SB_ERFC_Q7 -0.0037923145573586226f
#define SB_ERFC_Q8 0.002665542531758547f
/* coefficient i of P (halved) and Q in u = sqrt(2) t: times sqrt(1/2)^i */
#define SB_SQRT_HALF_POW0 1.0
#define SB_SQRT_HALF_POW1 0.70710678118654752440
#define SB_SQRT_HALF_POW2 0.5
#define SB_SQRT_HALF_POW3 0.35355339059327376220
#define SB_SQRT_HALF_POW4 0.25
#define SB_SQRT_HALF_POW5 0.17677669529663688110
#define SB_SQRT_HALF_POW6 0.125
#define SB_SQRT_HALF_POW7 0.08838834764831844055
#define SB_SQRT_HALF_POW8 0.0625
#define SB_GELU_P(i) ((float)(0.5 * (double)SB_ERFC_P##i * SB_SQRT_HALF_POW##i))
#define SB_GELU_Q(i) ((float)((double)SB_ERFC_Q##i * SB_SQRT_HALF_POW##i))
#define SB_GELU_END ((float)(SB_ERFC_END * 1.41421356237309504880))   /* the end of r, in u */

/* The operations AVX-512 and AVX2 spell alike, but for the prefix (_mm512, _mm256) */
#define SB_X86_OPS(P)                                                                          \
    static inline vf vf_zero(void) { return P##_setzero_ps(); }                                \
    static inline vf vf_set1(float a) { return P##_set1_ps(a); }                               \
    static inline vf vf_loadu(const float *p) { return P##_loadu_ps(p); }                      \
    static inline void vf_storeu(float *p, vf v) { P##_storeu_ps(p, v); }                      \
    static inline vf vf_fmadd(vf a, vf b, vf c) { return P##_fmadd_ps(a, b, c); }              \
    static inline vf vf_fnmadd(vf a, vf b, vf c) { return P##_fnmadd_ps(a, b, c); }            \
    static inline vf vf_add(vf a, vf b) { return P##_add_ps(a, b); }                           \
    static inline vf vf_sub(vf a, vf b) { return P##_sub_ps(a, b); }                           \
    static inline vf vf_mul(vf a, vf b) { return P##_mul_ps(a, b); }                           \
    static inline vf vf_div(vf a, vf b) { return P##_div_ps(a, b); }                           \
    static inline vf vf_sqrt(vf a) { return P##_sqrt_ps(a); }                                  \
    static inline vf vf_max(vf a, vf b) { return P##_max_ps(a, b); }

#if defined(__AVX512F__)
#include <immintrin.h>
#define SB_VW 16
#define SB_ISA_NAME "avx512"
typedef __m512 vf;
typedef __mmask16 vmask;
SB_X86_OPS(_mm512)
/* mask with the first n lanes set (n may be <= 0 or >= SB_VW) */
static inline vmask vm_first(int n) {
    if (n <= 0) return 0;
    if (n >= SB_VW) return (vmask)0xFFFF;
    return (vmask)((1u << n) - 1u);
}
static inline vf vf_maskloadu(const float *p, vmask m) { return _mm512_maskz_loadu_ps(m, p); }
static inline void vf_maskstoreu(float *p, vmask m, vf v) { _mm512_mask_storeu_ps(p, m, v); }

static inline vf vf_abs(vf a) { return _mm512_abs_ps(a); }
/* lanes of x below 0: a; the others (and NaN): b */
static inline vf vf_if_negative(vf x, vf a, vf b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), b, a);
}

static inline vf vf_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* p 2^k for whole k in [-126, 0], and 0 in the lanes where v < SB_EXP_MIN (the end of vf_exp_nonpos) */
static inline vf sb_exp_scale(vf p, vf k, vf v) {
    return _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(v, _mm512_set1_ps(SB_EXP_MIN), _CMP_NLT_UQ), p, k);
}

#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SB_VW 8
#define SB_ISA_NAME "avx2"
typedef __m256 vf;
typedef __m256i vmask;
SB_X86_OPS(_mm256)
static inline vmask vm_first(int n) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes);
}
static inline vf vf_maskloadu(const float *p, vmask m) { return _mm256_maskload_ps(p, m); }
static inline void vf_maskstoreu(float *p, vmask m, vf v) { _mm256_maskstore_ps(p, m, v); }

static inline vf vf_abs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
static inline vf vf_if_negative(vf x, vf a, vf b) {
    return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
}

static inline vf vf_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vf sb_exp_scale(vf p, vf k, vf v) {
    /* 2^k: the float whose exponent field is k + 127 */
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_cmp_ps(v, _mm256_set1_ps(SB_EXP_MIN), _CMP_NLT_UQ),
                         _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
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
static inline vf vf_abs(vf a) {
    for (int i = 0; i < SB_VW; i++) a[i] = fabsf(a[i]);
    return a;
}
static inline vf vf_if_negative(vf x, vf a, vf b) {
    for (int i = 0; i < SB_VW; i++) b[i] = x[i] < 0.0f ? a[i] : b[i];
    return b;
}
static inline vf vf_exp_nonpos(vf v) {
    for (int i = 0; i < SB_VW; i++) v[i] = v[i] < SB_EXP_MIN ? 0.0f : expf(v[i]);
    return v;
}
#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
static inline vf vf_exp_nonpos(vf v) {
    const vf x = vf_max(vf_set1(SB_EXP_MIN), v);              /* NaN stays NaN */
    const vf k = vf_round(vf_mul(x, vf_set1(SB_LOG2E)));
    vf r = vf_fnmadd(k, vf_set1(SB_LN2_HI), x);
    r = vf_fnmadd(k, vf_set1(SB_LN2_LO), r);
    vf p = vf_set1(1.0f / 5040);
    p = vf_fmadd(p, r, vf_set1(1.0f / 720));
    p = vf_fmadd(p, r, vf_set1(1.0f / 120));
    p = vf_fmadd(p, r, vf_set1(1.0f / 24));
    p = vf_fmadd(p, r, vf_set1(1.0f / 6));
    p = vf_fmadd(p, r, vf_set1(0.5f));
    p = vf_fmadd(p, r, vf_set1(1.0f));
    p = vf_fmadd(p, r, vf_set1(1.0f));
    return sb_exp_scale(p, k, v);
}
#endif

static inline vf vf_gelu(vf x) {
    const vf u = vf_abs(x);
    vf p = vf_fmadd(vf_set1(SB_GELU_P(5)), u, vf_set1(SB_GELU_P(4)));
    p = vf_fmadd(p, u, vf_set1(SB_GELU_P(3)));
    p = vf_fmadd(p, u, vf_set1(SB_GELU_P(2)));
    p = vf_fmadd(p, u, vf_set1(SB_GELU_P(1)));
    p = vf_fmadd(p, u, vf_set1(SB_GELU_P(0)));
    vf q = vf_fmadd(vf_set1(SB_GELU_Q(8)), u, vf_set1(SB_GELU_Q(7)));
    q = vf_fmadd(q, u, vf_set1(SB_GELU_Q(6)));
    q = vf_fmadd(q, u, vf_set1(SB_GELU_Q(5)));
    q = vf_fmadd(q, u, vf_set1(SB_GELU_Q(4)));
    q = vf_fmadd(q, u, vf_set1(SB_GELU_Q(3)));
    q = vf_fmadd(q, u, vf_set1(SB_GELU_Q(2)));
    q = vf_fmadd(q, u, vf_set1(SB_GELU_Q(1)));
    q = vf_fmadd(q, u, vf_set1(1.0f));
    /* s = erfc(t) / 2 below the end, else 0: the lanes past it (where P/Q may be anything, inf
     * or NaN included) and NaN lanes (whose x makes the result NaN below) take 0 */
    const vf s = vf_if_negative(vf_sub(u, vf_set1(SB_GELU_END)), vf_div(p, q), vf_zero());
    return vf_mul(x, vf_if_negative(x, s, vf_sub(vf_set1(1.0f), s)));
}

/* GELU over y[0:n] in place. Out of line on purpose: inlined into every SpMM tile, its
 * constants and code slowed the (far more frequent) tiles without it by ~10%. */
static __attribute__((noinline)) void sb_gelu_inplace(float *y, int n) {
    int j = 0;
    for (; j + SB_VW <= n; j += SB_VW) vf_storeu(y + j, vf_gelu(vf_loadu(y + j)));
    if (j < n) {
        vmask m = vm_first(n - j);
        vf_maskstoreu(y + j, m, vf_gelu(vf_maskloadu(y + j, m)));
    }
}

static inline void sb_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
/* The lines a tile is about to store, asked for when the tile starts (its stores come a block
 * row of FMAs later): with Y rows far apart (N = 1024: 4 KiB) no hardware prefetcher brings
 * them, and each store waited for its line (a write hint; PREFETCHT0 unless the build targets
 * PREFETCHW, which ours do not, for CPUs without it). */
static inline void sb_prefetch_store(const void *p) { __builtin_prefetch(p, 1, 3); }

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
