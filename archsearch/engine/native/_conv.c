/* A CNN's first convolution (one input channel per run), with the max-pooling after it, for archsearch/conv.py
 * (loaded with ctypes, built on first use). Single-threaded; any C compiler, no library.
 *
 * Why by hand: the fused model's first layer is a grouped convolution with one input channel per group (K runs x C
 * output channels); oneDNN runs it at ~25 GFLOP/s on one core, and max-pooling its output costs as much again (a
 * zero-fill and a scatter of the whole gradient). Here each run's image is correlated with its C filters directly,
 * vectorised along the image: positions are flattened with the padded row pitch Wp, so a tap (dy, dx) is the constant
 * shift dy*Wp + dx and every load is contiguous (the Wp - OW columns past each row are computed and ignored). The
 * pooled maximum is taken while the conv plane is still in L1, and its position (first maximum in scan order, NaN
 * winning, exactly as torch's max_pool2d) is kept for the backward, which rebuilds the dense conv gradient per plane.
 *
 * Layouts: x (B, K, H, W) with strides sb, sk (elements; rows contiguous); w (K*C, R, R); bias (K*C);
 * out (B, K*C, PH, PW); arg (B, K*C, PH, PW) bytes, the pooling's winners (pool is 1, none, or 2).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define V 16 /* floats per vector */
typedef float vf __attribute__((vector_size(V * sizeof(float))));

static inline vf loadu(const float *p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void storeu(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float s) { return (vf){0} + s; }

typedef struct {
  int B, K, C, H, W, R, pad, pool;
  int Hp, Wp, OH, OW, PH, PW, npos, nvec;
} geom;

static geom make_geom(int B, int K, int C, int H, int W, int R, int pad, int pool) {
  geom g = {B, K, C, H, W, R, pad, pool};
  g.Hp = H + 2 * pad, g.Wp = W + 2 * pad;
  g.OH = g.Hp - R + 1, g.OW = g.Wp - R + 1;
  g.PH = g.OH / pool, g.PW = g.OW / pool;
  g.npos = g.OH * g.Wp;            /* conv outputs computed per plane, OW of every Wp used */
  g.nvec = (g.npos + V - 1) / V;   /* in vectors */
  return g;
}

/* Image (b, k) into buf: zero border of pad, then zeros past the end so that the last vector's taps stay inside. */
static void load_image(const geom *g, const float *x, long sb, long sk, int b, int k, float *buf, long buflen) {
  memset(buf, 0, buflen * sizeof(float));
  const float *src = x + b * sb + k * sk;
  for (int y = 0; y < g->H; y++) memcpy(buf + (y + g->pad) * g->Wp + g->pad, src + (long)y * g->W, g->W * sizeof(float));
}

static long image_len(const geom *g) { return (long)g->nvec * V + (long)(g->R - 1) * g->Wp + g->R; }

/* conv[c][p] for CB channels starting at filter f0: acc over R*R taps, T vectors of positions at a time. */
#define T 2
static inline __attribute__((always_inline)) void conv_planes(const geom *g, const float *img, const float *w,
                                                              const float *bias, int CB, float *conv, long plane) {
  const int R = g->R, Wp = g->Wp;
  int v0 = 0;
  for (; v0 + T <= g->nvec; v0 += T) {
    vf acc[8][T];
    for (int c = 0; c < CB; c++)
      for (int t = 0; t < T; t++) acc[c][t] = splat(bias[c]);
    for (int dy = 0; dy < R; dy++)
      for (int dx = 0; dx < R; dx++) {
        const float *in = img + v0 * V + dy * Wp + dx;
        vf xv[T];
        for (int t = 0; t < T; t++) xv[t] = loadu(in + t * V);
        for (int c = 0; c < CB; c++) {
          vf wv = splat(w[(c * R + dy) * R + dx]);
          for (int t = 0; t < T; t++) acc[c][t] += wv * xv[t];
        }
      }
    for (int c = 0; c < CB; c++)
      for (int t = 0; t < T; t++) storeu(conv + c * plane + (v0 + t) * V, acc[c][t]);
  }
  for (; v0 < g->nvec; v0++) {
    for (int c = 0; c < CB; c++) {
      vf acc = splat(bias[c]);
      for (int dy = 0; dy < R; dy++)
        for (int dx = 0; dx < R; dx++) acc += splat(w[(c * R + dy) * R + dx]) * loadu(img + v0 * V + dy * Wp + dx);
      storeu(conv + c * plane + v0 * V, acc);
    }
  }
}

static void conv_channels(const geom *g, const float *img, const float *w, const float *bias, int cb, float *conv,
                          long plane) {
  switch (cb) { /* constant block sizes, so that the accumulators live in registers */
    case 1: conv_planes(g, img, w, bias, 1, conv, plane); break;
    case 2: conv_planes(g, img, w, bias, 2, conv, plane); break;
    case 3: conv_planes(g, img, w, bias, 3, conv, plane); break;
    case 4: conv_planes(g, img, w, bias, 4, conv, plane); break;
    case 5: conv_planes(g, img, w, bias, 5, conv, plane); break;
    case 6: conv_planes(g, img, w, bias, 6, conv, plane); break;
    case 7: conv_planes(g, img, w, bias, 7, conv, plane); break;
    default: conv_planes(g, img, w, bias, 8, conv, plane); break;
  }
}

/* Channel blocks of at most 8 filters, as even as possible (6 stays 6, 10 becomes 5 + 5). */
static int block_of(int C) {
  int blocks = (C + 7) / 8;
  return (C + blocks - 1) / blocks;
}

typedef int vi __attribute__((vector_size(V * sizeof(int))));
/* lanes of a where mask (a comparison's all-ones lanes), else of b */
static inline vf pick(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
#if defined(__clang__)
#define EVEN(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
#define ODD(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)
#else
#define EVEN(a, b) __builtin_shuffle(a, b, (vi){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})
#define ODD(a, b) __builtin_shuffle(a, b, (vi){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31})
#endif

/* 2x2 max-pooling of one conv plane into out (PH x PW) and the winners' positions into arg: first maximum in the
 * window's scan order, a NaN winning, as torch's max_pool2d. Vectorised over 16 windows of a row (even and odd
 * columns split by shuffles) with selects: branching on the data took longer than the convolution itself. */
static void pool2_plane(const geom *g, const float *conv, float *out, unsigned char *arg) {
  for (int py = 0; py < g->PH; py++)
    for (int px = 0; px < g->PW; px += V) {
      const float *r0 = conv + (2 * py) * g->Wp + 2 * px, *r1 = r0 + g->Wp;
      vf a0 = loadu(r0), a1 = loadu(r0 + V), b0 = loadu(r1), b1 = loadu(r1 + V);
      vf cand[4] = {EVEN(a0, a1), ODD(a0, a1), EVEN(b0, b1), ODD(b0, b1)};
      vf best = cand[0];
      vf where = {0};
      for (int i = 1; i < 4; i++) {
        vi take = (cand[i] > best) | (cand[i] != cand[i]);
        best = pick(take, cand[i], best);
        where = pick(take, splat((float)i), where);
      }
      int n = g->PW - px < V ? g->PW - px : V;
      memcpy(out + py * g->PW + px, &best, n * sizeof(float));
      for (int l = 0; l < n; l++) arg[py * g->PW + px + l] = (unsigned char)where[l];
    }
}

/* Scratch memory kept from call to call (per thread), grown when a call needs more: a training step calls these
 * functions with the same sizes every time, so after the first step nothing is allocated. */
static void *scratch(int slot, size_t bytes) {
  static __thread void *buffers[4];
  static __thread size_t sizes[4];
  if (bytes > sizes[slot]) {
    size_t size = (bytes + 63) / 64 * 64;
    void *grown = aligned_alloc(64, size);
    if (grown == NULL) return NULL;
    free(buffers[slot]);
    buffers[slot] = grown, sizes[slot] = size;
  }
  return buffers[slot];
}

int archsearch_conv_forward(int B, int K, int C, int H, int W, int R, int pad, int pool, const float *x, long sb,
                            long sk, const float *w, const float *bias, float *out, unsigned char *arg) {
  geom g = make_geom(B, K, C, H, W, R, pad, pool);
  const long ilen = image_len(&g), plane = (long)g.nvec * V + 2 * V, KC = (long)K * C;
  float *img = scratch(0, ilen * sizeof(float)), *conv = scratch(1, plane * C * sizeof(float));
  if (img == NULL || conv == NULL) return -1;
  const int cb = block_of(C);
  for (int b = 0; b < B; b++)
    for (int k = 0; k < K; k++) {
      load_image(&g, x, sb, sk, b, k, img, ilen);
      for (int c0 = 0; c0 < C; c0 += cb) {
        int n = C - c0 < cb ? C - c0 : cb;
        long f0 = (long)k * C + c0;
        conv_channels(&g, img, w + f0 * R * R, bias + f0, n, conv + c0 * plane, plane);
      }
      for (int c = 0; c < C; c++) {
        const long f = (long)k * C + c;
        float *o = out + (b * KC + f) * g.PH * g.PW;
        if (pool == 2) {
          pool2_plane(&g, conv + c * plane, o, arg + (b * KC + f) * g.PH * g.PW);
        } else {
          for (int y = 0; y < g.OH; y++) memcpy(o + y * g.OW, conv + c * plane + y * g.Wp, g.OW * sizeof(float));
        }
      }
    }
  return 0;
}

/* Accumulate into ac[dy * R + dx] the products of a plane's conv gradient with the image shifted by (dy, dx). */
static inline __attribute__((always_inline)) void wgrad_r(const geom *g, int R, const float *gp, const float *img,
                                                          vf *ac) {
  for (int dy = 0; dy < R; dy++) {
    vf s[16] = {{0}};
    for (int v = 0; v < g->nvec; v++) {
      const vf gv = loadu(gp + v * V);
      const float *in = img + v * V + dy * g->Wp;
      for (int dx = 0; dx < R; dx++) s[dx] += gv * loadu(in + dx);
    }
    for (int dx = 0; dx < R; dx++) ac[dy * R + dx] += s[dx];
  }
}

static void wgrad(const geom *g, const float *gp, const float *img, vf *ac) {
  switch (g->R) { /* a constant kernel size keeps the partial sums in registers */
    case 1: wgrad_r(g, 1, gp, img, ac); break;
    case 2: wgrad_r(g, 2, gp, img, ac); break;
    case 3: wgrad_r(g, 3, gp, img, ac); break;
    case 4: wgrad_r(g, 4, gp, img, ac); break;
    case 5: wgrad_r(g, 5, gp, img, ac); break;
    case 6: wgrad_r(g, 6, gp, img, ac); break;
    case 7: wgrad_r(g, 7, gp, img, ac); break;
    default: wgrad_r(g, g->R, gp, img, ac); break;
  }
}

/* Weight and bias gradients from grad (B, K*C, PH, PW) of the pooled output and arg. The input's
 * gradient is not needed: this is the first layer. dw (K*C, R, R) and dbias (K*C) are overwritten. */
int archsearch_conv_backward(int B, int K, int C, int H, int W, int R, int pad, int pool, const float *x, long sb,
                             long sk, const float *grad, const unsigned char *arg, float *dw, float *dbias) {
  geom g = make_geom(B, K, C, H, W, R, pad, pool);
  const long ilen = image_len(&g), plane = (long)g.nvec * V, KC = (long)K * C, taps = (long)R * R;
  float *img = scratch(0, ilen * sizeof(float)), *gc = scratch(1, plane * C * sizeof(float));
  /* per filter and tap: a vector of partial sums, reduced at the end */
  vf *acc = scratch(2, KC * taps * sizeof(vf));
  double *bsum = scratch(3, KC * sizeof(double));
  if (img == NULL || gc == NULL || acc == NULL || bsum == NULL) return -1;
  memset(acc, 0, KC * taps * sizeof(vf));
  memset(bsum, 0, KC * sizeof(double));
  for (int b = 0; b < B; b++)
    for (int k = 0; k < K; k++) {
      load_image(&g, x, sb, sk, b, k, img, ilen);
      for (int c = 0; c < C; c++) { /* the dense conv gradient: each pooled gradient back at its maximum */
        const long f = (long)k * C + c;
        const float *gr = grad + (b * KC + f) * g.PH * g.PW;
        const unsigned char *a = pool == 2 ? arg + (b * KC + f) * g.PH * g.PW : NULL;
        float *gp = gc + c * plane, sum = 0;
        memset(gp, 0, plane * sizeof(float));
        for (int py = 0; py < g.PH; py++)
          for (int px = 0; px < g.PW; px++) {
            const float v = gr[py * g.PW + px];
            const int where = a ? a[py * g.PW + px] : 0;
            gp[(py * pool + where / 2) * g.Wp + px * pool + where % 2] = v;
            sum += v;
          }
        bsum[f] += sum;
      }
      for (int c = 0; c < C; c++) wgrad(&g, gc + c * plane, img, acc + ((long)k * C + c) * taps);
    }
  for (long f = 0; f < KC; f++) {
    for (long t = 0; t < taps; t++) {
      float sum = 0;
      for (int l = 0; l < V; l++) sum += acc[f * taps + t][l];
      dw[f * taps + t] = sum;
    }
    dbias[f] = (float)bsum[f];
  }
  return 0;
}
