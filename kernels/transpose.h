/* dst = src^T on the kernels' pool: the token-major entry of spmm (PyTorch's activations are
 * tokens x features; the kernels compute features x tokens); and dst = src, staging X. 16x16
 * blocks go through registers on AVX-512, 8x8 tiles on AVX2 (and at the edges of AVX-512's),
 * then 4x4 tiles (SSE); the rest and non-x86 builds go element by element. The kernels' scratch
 * tiles of 16 outputs go into token-major Y as 16x16 blocks on AVX-512 (sb_store_tokens).
 * Each task takes a stripe of SB_TR_STRIPE source rows, so both sides stream through the cache.
 */
#ifndef SPARSEBENCH_TRANSPOSE_H
#define SPARSEBENCH_TRANSPOSE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "simd.h"
#include "pool.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#define SB_TR_STRIPE 32

#if defined(__AVX2__)
static inline void sb_transpose8x8(const float *s, ptrdiff_t lds, float *d, ptrdiff_t ldd) {
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + lds);
    __m256 r2 = _mm256_loadu_ps(s + 2 * lds), r3 = _mm256_loadu_ps(s + 3 * lds);
    __m256 r4 = _mm256_loadu_ps(s + 4 * lds), r5 = _mm256_loadu_ps(s + 5 * lds);
    __m256 r6 = _mm256_loadu_ps(s + 6 * lds), r7 = _mm256_loadu_ps(s + 7 * lds);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#define SB_TR_TILE 8
#else
#define SB_TR_TILE 0
#endif

typedef struct {
    const float *src;
    ptrdiff_t lds;
    float *dst;
    ptrdiff_t ldd;
    int rows;                      /* of src */
    int cols;
} sb_transpose_job_t;

/* dst[c][r] = src[r][c] for source rows r0..r1 and columns 0..cols, 8 or 4 rows at a time: the
 * rows of Y a K-sliced task has summed, and the edges of sb_transpose_block. */
static void sb_transpose_rows(const float *src, ptrdiff_t lds, float *dst, ptrdiff_t ldd, int r0, int r1,
                              int cols) {
    int r = r0, c;
#if SB_TR_TILE
    for (; r + SB_TR_TILE <= r1; r += SB_TR_TILE) {
        for (c = 0; c + SB_TR_TILE <= cols; c += SB_TR_TILE)
            sb_transpose8x8(src + r * lds + c, lds, dst + (ptrdiff_t)c * ldd + r, ldd);
        for (; c < cols; c++)
            for (int i = r; i < r + SB_TR_TILE; i++) dst[(ptrdiff_t)c * ldd + i] = src[i * lds + c];
    }
#endif
#if defined(__SSE__)
    for (; r + 4 <= r1; r += 4) {          /* 4 rows (a 4x1 register tile): 4x4 tiles, 16-byte stores */
        for (c = 0; c + 4 <= cols; c += 4) {
            __m128 a = _mm_loadu_ps(src + r * lds + c), b = _mm_loadu_ps(src + (r + 1) * lds + c);
            __m128 e = _mm_loadu_ps(src + (r + 2) * lds + c), f = _mm_loadu_ps(src + (r + 3) * lds + c);
            _MM_TRANSPOSE4_PS(a, b, e, f);
            _mm_storeu_ps(dst + (ptrdiff_t)c * ldd + r, a);
            _mm_storeu_ps(dst + (ptrdiff_t)(c + 1) * ldd + r, b);
            _mm_storeu_ps(dst + (ptrdiff_t)(c + 2) * ldd + r, e);
            _mm_storeu_ps(dst + (ptrdiff_t)(c + 3) * ldd + r, f);
        }
        for (; c < cols; c++)
            for (int i = r; i < r + 4; i++) dst[(ptrdiff_t)c * ldd + i] = src[i * lds + c];
    }
#endif
    for (; r < r1; r++)
        for (c = 0; c < cols; c++) dst[(ptrdiff_t)c * ldd + r] = src[r * lds + c];
}

#if defined(__AVX512F__)
/* dst rows 0..15 (16 floats each) = the 16x16 block of src, transposed in registers */
static inline void sb_transpose16x16(const float *s, ptrdiff_t lds, float *d, ptrdiff_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(s + i * lds);
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {          /* r[4 i + k], lane L: rows 4i..4i+3 of column 4L + k */
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int k = 0; k < 4; k++) {
        __m512 w0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88), w1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
        __m512 x0 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88), x1 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
        _mm512_storeu_ps(d + (ptrdiff_t)k * ldd, _mm512_shuffle_f32x4(w0, x0, 0x88));
        _mm512_storeu_ps(d + (ptrdiff_t)(4 + k) * ldd, _mm512_shuffle_f32x4(w1, x1, 0x88));
        _mm512_storeu_ps(d + (ptrdiff_t)(8 + k) * ldd, _mm512_shuffle_f32x4(w0, x0, 0xDD));
        _mm512_storeu_ps(d + (ptrdiff_t)(12 + k) * ldd, _mm512_shuffle_f32x4(w1, x1, 0xDD));
    }
}
#endif

/* dst[c][r] = src[r][c] for r < rows, c < cols. Both sides can be rows a multiple of 4 KiB
 * apart (a panel of token-major X, token rows of Yt), which share a few cache sets, and a line
 * half read or half written would be evicted before the loop came back to it: so the bulk moves
 * a row's 64 bytes at once. On AVX-512, 16x16 blocks in registers, 16 source rows at a time,
 * each read from start to end (a stream the prefetchers follow), from the first line boundary;
 * on AVX2, blocks of 16 source columns, two 8x8 tiles each; the edges go by sb_transpose_rows.
 * A panel task's tokens of X; a group of Y's register tiles stored token-major. */
static inline void sb_transpose_block(const float *src, ptrdiff_t lds, float *dst, ptrdiff_t ldd, int rows,
                                      int cols) {
    int c = 0;
#if defined(__AVX512F__)
    /* rows a whole number of lines apart (a numpy array's start is often 16 bytes past a line):
     * the columns up to the first line boundary go first, so that every 16x16 load is one line */
    int lead = lds % 16 ? 0 : (int)((-(uintptr_t)src & 63) / sizeof(float));
    if (rows >= 16 && cols >= lead + 16) {
        int r = 0, c1 = cols - (cols - lead) % 16;
        if (lead) sb_transpose_rows(src, lds, dst, ldd, 0, rows, lead);
        for (; r + 16 <= rows; r += 16)
            for (c = lead; c < c1; c += 16)
                sb_transpose16x16(src + r * lds + c, lds, dst + (ptrdiff_t)c * ldd + r, ldd);
        if (r < rows) sb_transpose_rows(src + lead, lds, dst + (ptrdiff_t)lead * ldd, ldd, r, rows, c1 - lead);
        c = c1;
    }
#elif SB_TR_TILE
    int whole = rows - rows % SB_TR_TILE;
    for (; c + 2 * SB_TR_TILE <= cols; c += 2 * SB_TR_TILE)
        for (int r = 0; r < whole; r += SB_TR_TILE) {
            sb_transpose8x8(src + r * lds + c, lds, dst + (ptrdiff_t)c * ldd + r, ldd);
            sb_transpose8x8(src + r * lds + c + SB_TR_TILE, lds, dst + (ptrdiff_t)(c + SB_TR_TILE) * ldd + r, ldd);
        }
    if (whole < rows && c > 0)          /* the last rows of the blocks done */
        sb_transpose_rows(src, lds, dst, ldd, whole, rows, c);
#endif
    if (c < cols) sb_transpose_rows(src + c, lds, dst + (ptrdiff_t)c * ldd, ldd, 0, rows, cols - c);
}

/* A scratch tile of register tiles (rows outputs x cols tokens) into token-major Y: with 16
 * rows (a cache line of each token's row), 16x16 blocks in registers, one store a token line;
 * otherwise sb_transpose_block. */
static inline void sb_store_tokens(const float *tile, ptrdiff_t ldt, float *dst, ptrdiff_t ldd, int rows,
                                   int cols) {
    int c = 0;
#if defined(__AVX512F__)
    if (rows == 16)
        for (; c + 16 <= cols; c += 16) sb_transpose16x16(tile + c, ldt, dst + (ptrdiff_t)c * ldd, ldd);
#endif
    if (c < cols) sb_transpose_block(tile + c, ldt, dst + (ptrdiff_t)c * ldd, ldd, rows, cols - c);
}

/* Source rows [SB_TR_STRIPE t, SB_TR_STRIPE (t + 1)) of the job. */
static void sb_transpose_task(void *ctx, int t) {
    const sb_transpose_job_t *j = (const sb_transpose_job_t *)ctx;
    int r0 = t * SB_TR_STRIPE, r1 = r0 + SB_TR_STRIPE < j->rows ? r0 + SB_TR_STRIPE : j->rows;
    sb_transpose_block(j->src + (ptrdiff_t)r0 * j->lds, j->lds, j->dst + r0, j->ldd, r1 - r0, j->cols);
}

/* Rows [SB_TR_STRIPE t, SB_TR_STRIPE (t + 1)) of a copy (rows x cols, no transpose). */
static void sb_copy_task(void *ctx, int t) {
    const sb_transpose_job_t *j = (const sb_transpose_job_t *)ctx;
    int r0 = t * SB_TR_STRIPE, r1 = r0 + SB_TR_STRIPE < j->rows ? r0 + SB_TR_STRIPE : j->rows;
    for (int r = r0; r < r1; r++) memcpy(j->dst + r * j->ldd, j->src + r * j->lds, (size_t)j->cols * sizeof(float));
}

/* dst = src (rows x cols, row strides lds and ldd) on up to `threads`: X staged onto the huge
 * pages of spmm's own buffers. */
static void sb_copy_rows(const float *src, ptrdiff_t lds, float *dst, ptrdiff_t ldd, int rows, int cols,
                         int threads) {
    sb_transpose_job_t job = {src, lds, dst, ldd, rows, cols};
    int tasks = (rows + SB_TR_STRIPE - 1) / SB_TR_STRIPE;
    if (tasks > 0 && cols > 0) sb_pool_run(threads, tasks, sb_copy_task, &job);
}

/* dst (cols x rows, row stride ldd) = src (rows x cols, row stride lds)^T on up to `threads`. */
static void sb_transpose(const float *src, ptrdiff_t lds, float *dst, ptrdiff_t ldd, int rows, int cols,
                         int threads) {
    sb_transpose_job_t job = {src, lds, dst, ldd, rows, cols};
    int tasks = (rows + SB_TR_STRIPE - 1) / SB_TR_STRIPE;
    if (tasks > 0 && cols > 0) sb_pool_run(threads, tasks, sb_transpose_task, &job);
}

#endif /* SPARSEBENCH_TRANSPOSE_H */
