/* Batched small matrix products through libxsmm's JIT kernels, for archsearch/gemm.py (loaded with ctypes, built on
 * first use). Row-major view: R[b] (M x N, leading dim ldR) = beta * R[b] + op(P[b]) @ Q[b], with op(P) = P stored
 * M x K, or, with transP, P stored K x M. libxsmm is column-major, where this product reads R^T = Q^T op(P)^T: Q is
 * its A operand and P its B operand, the one its kernels can take transposed (its JIT cannot transpose A).
 * Returns 0, or -1 when libxsmm has no kernel for the shape (the caller falls back to torch). */
#include <libxsmm.h>

int archsearch_xsmm_init(void) {
  libxsmm_init();
  return 0;
}

int archsearch_xsmm_bgemm(int batch, int M, int N, int K, const float *P, long strideP, int ldP, int transP,
                          const float *Q, long strideQ, int ldQ, float *R, long strideR, int ldR, float beta) {
  const float alpha = 1.0f;
  const int flags = transP ? LIBXSMM_GEMM_FLAG_TRANS_B : LIBXSMM_GEMM_FLAG_NONE;
  const libxsmm_blasint lda = ldQ, ldb = ldP, ldc = ldR;
  libxsmm_smmfunction kernel = libxsmm_smmdispatch(N, M, K, &lda, &ldb, &ldc, &alpha, &beta, &flags, NULL);
  if (kernel == NULL) return -1;
  for (int i = 0; i < batch; i++) kernel(Q + i * strideQ, P + i * strideP, R + i * strideR);
  return 0;
}

/* Row-major, batched: out[b] (cols x rows, leading dim ldOut) = in[b] (rows x cols, leading dim ldIn) transposed. */
void archsearch_xsmm_btrans(int batch, int rows, int cols, const float *in, long strideIn, int ldIn, float *out,
                            long strideOut, int ldOut) {
  for (int i = 0; i < batch; i++)
    libxsmm_otrans(out + i * strideOut, in + i * strideIn, sizeof(float), cols, rows, ldIn, ldOut);
}
