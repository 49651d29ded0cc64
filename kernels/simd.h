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

#include <stdint.h>
#include <string.h>

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
