/* oneDNN matmul for the cpu backend: C = A . B in F32 or BF16 (F32 accumulation and output), with the
 * primitives cached by shape so that a decode loop creates none after its first step. */
#ifndef DSM_DNNL_MATMUL_H
#define DSM_DNNL_MATMUL_H

#include <stdint.h>

struct dsm_dnnl;

int dsm_dnnl_create(struct dsm_dnnl **out);
/* Accepts NULL. */
void dsm_dnnl_destroy(struct dsm_dnnl *d);

/* C[M, N] (row stride ldc) = A[M, K] (row stride lda) . B, where B is stored as [N, K] with row stride
 * ldb when b_trans (a Linear weight), or as [K, N] with row stride ldb otherwise. A and B are both F32
 * (bf16 = 0) or both BF16 (bf16 = 1, uint16_t bits). Returns 0 or DSM_EUNSUPPORTED / DSM_ENOMEM with
 * the oneDNN status in the message. */
int dsm_dnnl_matmul(struct dsm_dnnl *d, int bf16, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
		    const void *B, int64_t ldb, int b_trans, float *C, int64_t ldc);

#endif
