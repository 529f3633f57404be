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

/* ---------------------------------------------------------------------------------------------------------------
 * A whole training step of a fused ReLU MLP (K runs, L linear layers), for archsearch/step.py: the same
 * computation as FusedStep's Python step (forward, loss, hand-written backward, streamed blocks, AdamW, the first
 * layer's forward for the announced next batch), in one call.
 *
 * Why: with its kernels in libxsmm, a row-10 step of ~6 ms spent ~1.5 ms between them: Python, torch's dispatch of
 * some 40 small operations and ctypes calls. Here the glue is a few loops. The arithmetic is FusedStep's: products
 * through the same libxsmm kernels, AdamW with torch's fused formula (torch.optim.AdamW defaults: betas and eps
 * passed in), log-softmax and its backward as torch writes them.
 *
 * Layouts (row-major, per run k): weights w (K, out, in), bias (K, out); activations (K, B, width). A layer with
 * rows[l] > 0 is streamed in blocks of rows[l] output rows: each block's weight gradient goes to the start of each
 * run's (rows, in) slice of a (K, rows, in) buffer.
 * params: per layer w, b, grad_w (whole or block buffer), grad_b, exp_avg_w, exp_avg_sq_w, exp_avg_b, exp_avg_sq_b.
 * --------------------------------------------------------------------------------------------------------------- */
#include <math.h>
#include <stdint.h>

typedef struct {
  float decay, c1, beta2, c2, bc2_sqrt, eps, neg_step_size;
} adam_consts;

static adam_consts adam_setup(double step, double lr, double beta1, double beta2, double wd, double eps) {
  /* in double, then rounded to float, as torch's CPU kernel does (aten/src/ATen/native/cpu/FusedAdamKernel.cpp) */
  const double bc1 = 1 - pow(beta1, step), bc2 = 1 - pow(beta2, step);
  adam_consts c = {(float)(1 - lr * wd), (float)(1 - beta1), (float)beta2, (float)(1 - beta2), (float)sqrt(bc2),
                   (float)eps, (float)(-(lr / bc1))};
  return c;
}

static void adamw(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, long n,
                  const adam_consts *c) {
  for (long i = 0; i < n; i++) {
    const float pi = p[i] * c->decay, gi = g[i];
    const float mi = fmaf(c->c1, gi - m[i], m[i]); /* exp_avg.lerp_(grad, 1 - beta1) */
    const float vi = v[i] * c->beta2 + c->c2 * gi * gi;
    m[i] = mi, v[i] = vi;
    p[i] = pi + c->neg_step_size * mi / (sqrtf(vi) / c->bc2_sqrt + c->eps);
  }
}

static int maxwidth(int L, const int *dims) {
  int w = 0;
  for (int l = 0; l <= L; l++) w = dims[l] > w ? dims[l] : w;
  return w;
}

/* Floats of workspace archsearch_mlp_step needs for batches of up to Bmax. */
long archsearch_mlp_workspace(int K, int L, int Bmax, const int *dims) {
  const long KB = (long)K * Bmax, mw = maxwidth(L, dims);
  long n = 4 * KB * mw + KB * dims[1] + KB * dims[0];
  for (int l = 1; l <= L; l++) n += KB * dims[l];
  return n;
}

/* h (K, B, out) = act(transpose(zt (K, out, B)) + bias); relu on hidden layers, as torch.relu (NaN stays NaN). */
static void bias_act(int K, int B, int out, const float *zt, const float *bias, float *h, int relu) {
  archsearch_xsmm_btrans(K, out, B, zt, (long)out * B, B, h, (long)B * out, out);
  for (int k = 0; k < K; k++)
    for (int b = 0; b < B; b++) {
      float *row = h + ((long)k * B + b) * out;
      const float *bk = bias + (long)k * out;
      if (relu)
        for (int o = 0; o < out; o++) {
          const float z = row[o] + bk[o];
          row[o] = z <= 0 ? 0 : z;
        }
      else
        for (int o = 0; o < out; o++) row[o] += bk[o];
    }
}

int archsearch_mlp_step(int K, int L, int Bmax, int B, const int *dims, const int *rows, float *const *params,
                        float *work, const float *x, const float *next_x, int Bnext, int use_ahead, const int64_t *y,
                        float *loss, double step, double lr, double beta1, double beta2, double wd, double eps) {
  const long KB = (long)K * Bmax, mw = maxwidth(L, dims);
  float *xt = work, *zt = xt + KB * mw, *ga = zt + KB * mw, *gb = ga + KB * mw;
  float *ahead = gb + KB * mw, *next_t = ahead + KB * dims[1], *acts = next_t + KB * dims[0];
  const float *h[64];
  float *hw[64];
  if (L >= 64 || B > Bmax || Bnext > Bmax) return -2;
  h[0] = x;
  for (int l = 1; l <= L; l++) hw[l] = acts, h[l] = acts, acts += KB * dims[l];
  const adam_consts ac = adam_setup(step, lr, beta1, beta2, wd, eps);

  /* forward: z^T = W @ h^T (libxsmm cannot transpose its other operand), then back to (K, B, out) */
  for (int l = 0; l < L; l++) {
    const int in = dims[l], out = dims[l + 1];
    const float *w = params[8 * l];
    const float *z = ahead; /* the first layer for this batch, computed during the last step */
    if (!(l == 0 && use_ahead)) {
      archsearch_xsmm_btrans(K, B, in, h[l], (long)B * in, in, xt, (long)in * B, B);
      if (archsearch_xsmm_bgemm(K, out, B, in, w, (long)out * in, in, 0, xt, (long)in * B, B, zt, (long)out * B, B,
                                0.0f))
        return -1;
      z = zt;
    }
    bias_act(K, B, out, z, params[8 * l + 1], hw[l + 1], l < L - 1);
  }

  /* log-softmax, loss, and the gradient of each run's mean loss: d/dz = (softmax - onehot) / B, written as torch's
   * _log_softmax_backward_data(grad, logp) = grad - exp(logp) * sum(grad) with grad = -1/B at the label */
  const int classes = dims[L];
  float *g = ga;
  for (int k = 0; k < K; k++) {
    float total = 0;
    for (int b = 0; b < B; b++) {
      float *z = hw[L] + ((long)k * B + b) * classes, *gz = g + ((long)k * B + b) * classes;
      float top = -INFINITY, sum = 0;
      for (int c = 0; c < classes; c++) top = z[c] > top || isnan(z[c]) ? z[c] : top;
      for (int c = 0; c < classes; c++) sum += expf(z[c] - top);
      const float lse = logf(sum), label = -1.0f / (float)B;
      const int64_t t = y[(long)k * B + b];
      for (int c = 0; c < classes; c++) {
        const float logp = z[c] - top - lse;
        gz[c] = (c == t ? label : 0.0f) - expf(logp) * label;
        if (c == t) total -= logp;
      }
    }
    loss[k] = total / (float)B;
  }

  /* backward, last layer first; each layer's weights are updated once its input gradient is out */
  for (int l = L - 1; l >= 0; l--) {
    const int in = dims[l], out = dims[l + 1];
    float *w = params[8 * l], *bias = params[8 * l + 1], *gw = params[8 * l + 2], *gbias = params[8 * l + 3];
    float *mw_ = params[8 * l + 4], *vw = params[8 * l + 5], *mb = params[8 * l + 6], *vb = params[8 * l + 7];
    float *dh = g == ga ? gb : ga;
    const int need_dx = l > 0, ahead_here = l == 0 && next_x != NULL;
    for (long i = 0; i < (long)K * out; i++) gbias[i] = 0;
    for (int k = 0; k < K; k++)
      for (int b = 0; b < B; b++) {
        const float *row = g + ((long)k * B + b) * out;
        float *acc = gbias + (long)k * out;
        for (int o = 0; o < out; o++) acc[o] += row[o];
      }
    if (ahead_here) archsearch_xsmm_btrans(K, Bnext, in, next_x, (long)Bnext * in, in, next_t, (long)in * Bnext, Bnext);
    const int block = rows[l] > 0 ? rows[l] : out;
    for (int r0 = 0; r0 < out; r0 += block) {
      const int n = out - r0 < block ? out - r0 : block;
      const long wstride = (long)out * in, gstride = rows[l] > 0 ? (long)rows[l] * in : wstride;
      if (need_dx && archsearch_xsmm_bgemm(K, B, in, n, g + r0, (long)B * out, out, 0, w + (long)r0 * in, wstride, in,
                                           dh, (long)B * in, in, r0 ? 1.0f : 0.0f))
        return -1;
      float *gblock = rows[l] > 0 ? gw : gw + (long)r0 * in;
      if (archsearch_xsmm_bgemm(K, n, in, B, g + r0, (long)B * out, out, 1, h[l], (long)B * in, in, gblock, gstride,
                                in, 0.0f))
        return -1;
      for (int k = 0; k < K; k++) {
        const long at = k * wstride + (long)r0 * in;
        adamw(w + at, gblock + k * gstride, mw_ + at, vw + at, (long)n * in, &ac);
      }
      if (r0 == 0) adamw(bias, gbias, mb, vb, (long)K * out, &ac);
      if (ahead_here && archsearch_xsmm_bgemm(K, n, Bnext, in, w + (long)r0 * in, wstride, in, 0, next_t,
                                              (long)in * Bnext, Bnext, ahead + (long)r0 * Bnext, (long)out * Bnext,
                                              Bnext, 0.0f))
        return -1;
    }
    if (need_dx) { /* through the previous layer's relu: its output h[l] is positive where the gradient passes */
      const long count = (long)K * B * in;
      for (long i = 0; i < count; i++) dh[i] = h[l][i] <= 0 ? 0 : dh[i];
      g = dh;
    }
  }
  return 0;
}
