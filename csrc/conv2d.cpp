// conv2d.cpp — 2-D convolution as implicit GEMMs on the GEMM microkernel, float and double.
//
// Shapes (every tensor any strides, in elements; n, c, h, w order for images, k, c, r, s for the
// weight): x [N, C, H, W], weight [K, C/G, R, S], out [N, K, OH, OW], G groups,
//     out[n, k, oh, ow] = act(bias[k] + sum_{c, r, s} x[n, c, oh*sH - pH + r*dH, ow*sW - pW + s*dW]
//                                                        * weight[k, c, r, s])   (c, k in one group)
// Only the top/left padding is passed: OH/OW fix the bottom/right ("same", output_padding).
//
// Every pass is one GEMM per group, C[m, j] = sum_k A[m, k] B[k, j], whose operands are read in
// place through offset tables instead of being copied into im2col buffers:
//   forward          m = k_out      j = (n, oh, ow)  k = (c, r, s)    A = weight  B = x patches
//   input gradient   m = c_in       j = (n, ih, iw)  k = (k, r, s)    A = weight  B = dy patches
//   weight gradient  m = k_out      j = (c, r, s)    k = (n, oh, ow)  A = dy      B = x patches
// B is the gathered operand: B[k, j] = b[kb[k] + jb[j]] where 0 <= ky[k] + jy[j] < Hb and
// 0 <= kx[k] + jx[j] < Wb, else 0 (the zero padding); every offset and coordinate is linear in
// the digits of k and j (struct Axis), tabulated once per cache block. The GEMM loops, the
// 12 x 32 AVX-512 microkernel and the epilogue (bias along m, activation, pre-activation) are
// gemm.cpp's (gemm_kernel.h); only packing and the tile store differ:
//   - packing B gathers the patches straight into the KC x NR micro-panels (a masked load when
//     the panel's 16 columns are consecutive in memory, e.g. one row of an NCHW image at stride 1,
//     a masked gather otherwise); padding costs nothing but the mask. Extra memory per thread is
//     the GEMM's packing buffers (KC x NC of B: 6 MiB for float) plus the tables, whatever the
//     batch.
//   - the tile store writes through the column offset table (a vector store when 32 consecutive
//     columns are consecutive in memory: NCHW outputs inside one image).
// Input gradient with stride s > 1: the input pixels are split into s_H x s_W phases
// (ih mod sH, iw mod sW); inside one phase the taps that reach it are a fixed arithmetic subset of
// r (and s) and the dy pixel they read moves by one per input pixel, so each phase is again a
// gather GEMM of the form above with no wasted taps. A phase no tap reaches gets 0 (+ bias).
// This pass with x as dy is conv_transpose2d's forward (bias along the input channels).
// Weight gradient: a reduction over N*OH*OW; split across threads over the (k_out, tap) tiles of
// the weight when there are enough, else over the reduction into per-thread partial weights that
// are summed afterwards — no atomics, deterministic.
//
// Test: pytest tests/test_conv2d.py      Benchmark: python -m pykernels bench conv2d
#include <vector>

#include "gemm_kernel.h"

namespace pk {
namespace PK_NS {
namespace {

// One index of the implicit GEMM (k or j) as three digits (i0, i1, i2), sizes n[], i2 fastest.
// One step of digit d moves operand A by a[d] elements (k only), B by b[d], C and the pre-activation
// by c[d] and p[d] (j only), and B's gathered row / column coordinate by y[d] / x[d].
struct Axis {
  int64_t n[3] = {1, 1, 1};
  int64_t a[3] = {0, 0, 0}, b[3] = {0, 0, 0}, c[3] = {0, 0, 0}, p[3] = {0, 0, 0};
  int64_t y[3] = {0, 0, 0}, x[3] = {0, 0, 0};
  int64_t size() const { return n[0] * n[1] * n[2]; }
};

template <typename T>
struct ImplicitGemm {
  int64_t M;                        // rows of A and C
  Axis kax, jax;                    // the reduction index k and the column index j
  const T* a; int64_t a_sm;         // A[m, k] = a[m * a_sm + ka(k)]
  const T* b; int64_t Hb, Wb;       // B[k, j] as described in the header
  int64_t y0, x0;                   // added to every gathered coordinate
  T* c; int64_t c_sm;               // C[m, j] = c[m * c_sm + jc(j)]
  T* p; int64_t p_sm;               // pre-activation, same indexing (nullptr = not written)
  const T* bias; int64_t s_bias;    // bias[m * s_bias] (nullptr = none)
  Act act;
  int64_t k0, k1;                   // the range of k this job reduces over
};

// Tables of one block of k (offsets in A and B, coordinates in B) or of j (B, C, P, coordinates).
struct Tables {
  int64_t *a, *b, *c, *p;
  int32_t *y, *x;
};

Tables tables(int slot, int64_t len) {
  const size_t bytes = static_cast<size_t>(len) * (4 * sizeof(int64_t) + 2 * sizeof(int32_t)) + 256;
  char* base = static_cast<char*>(tls_buffer(slot, bytes));
  Tables t;
  t.a = reinterpret_cast<int64_t*>(base);
  t.b = t.a + len; t.c = t.b + len; t.p = t.c + len;
  t.y = reinterpret_cast<int32_t*>(t.p + len); t.x = t.y + len;
  return t;
}

// Fills t[0 .. len) for the indices i0 .. i0 + len of axis ax (mixed radix counting).
void fill(const Axis& ax, int64_t i0, int64_t len, const Tables& t) {
  int64_t d2 = i0 % ax.n[2], d1 = (i0 / ax.n[2]) % ax.n[1], d0 = i0 / (ax.n[1] * ax.n[2]);
  for (int64_t i = 0; i < len; ++i) {
    t.a[i] = d0 * ax.a[0] + d1 * ax.a[1] + d2 * ax.a[2];
    t.b[i] = d0 * ax.b[0] + d1 * ax.b[1] + d2 * ax.b[2];
    t.c[i] = d0 * ax.c[0] + d1 * ax.c[1] + d2 * ax.c[2];
    t.p[i] = d0 * ax.p[0] + d1 * ax.p[1] + d2 * ax.p[2];
    t.y[i] = static_cast<int32_t>(d0 * ax.y[0] + d1 * ax.y[1] + d2 * ax.y[2]);
    t.x[i] = static_cast<int32_t>(d0 * ax.x[0] + d1 * ax.x[1] + d2 * ax.x[2]);
    if (++d2 == ax.n[2]) {
      d2 = 0;
      if (++d1 == ax.n[1]) { d1 = 0; ++d0; }
    }
  }
}

// ---- packing -------------------------------------------------------------------------------
// A block [mc, kc]: out[panel][k][MR], rows past mc zero.
template <typename T, int MR>
void pack_a_tab(int64_t mc, int64_t kc, const T* a, int64_t sm, const int64_t* ka, T* out) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - i0);
    T* o = out + i0 * kc;
    const T* rows[MR];
    for (int i = 0; i < MR; ++i) rows[i] = a + (i0 + std::min<int64_t>(i, mr - 1)) * sm;
    for (int64_t k = 0; k < kc; ++k) {
      const int64_t off = ka[k];
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) o[k * MR + i] = i < mr ? rows[i][off] : T(0);
    }
  }
}

// One micro-panel of B: kc rows x NR columns (nr valid, the rest zero), gathered through the
// tables (k side: kb, ky, kx; j side: jb, jy, jx, already offset to the panel's first column).
template <typename T, int NR>
void pack_b_scalar(int64_t kc, int64_t nr, const T* b, const int64_t* kb, const int32_t* ky,
                   const int32_t* kx, const int64_t* jb, const int32_t* jy, const int32_t* jx,
                   int64_t Hb, int64_t Wb, T* out) {
  for (int64_t k = 0; k < kc; ++k) {
    const T* src = b + kb[k];
    for (int64_t j = 0; j < NR; ++j) {
      T v = T(0);
      if (j < nr) {
        const int64_t y = int64_t(ky[k]) + jy[j], x = int64_t(kx[k]) + jx[j];
        if (y >= 0 && y < Hb && x >= 0 && x < Wb) v = src[jb[j]];
      }
      out[k * NR + j] = v;
    }
  }
}

#if defined(PK_ISA_AVX512)
// AVX-512: each group of 16 (float) / 8 (double) columns is one masked load — the columns are
// consecutive in memory — or one masked gather with 32-bit offsets relative to the first column.
// The mask is the bounds test (the zero padding) and the panel's valid columns.
template <typename T> struct Gather;
template <> struct Gather<float> {
  using I = __m512i;
  static constexpr int L = 16;
  static I load_idx(const int32_t* p) { return _mm512_loadu_si512(p); }
  static __mmask16 inside(I y, I x, I H, I W) {
    return _mm512_cmplt_epu32_mask(y, H) & _mm512_cmplt_epu32_mask(x, W);
  }
  static I add(I a, int32_t s) { return _mm512_add_epi32(a, _mm512_set1_epi32(s)); }
  static I bcast(int32_t s) { return _mm512_set1_epi32(s); }
  static void run(float* out, const float* src, I rel, __mmask16 m, bool consecutive) {
    const __m512 v = consecutive ? _mm512_maskz_loadu_ps(m, src)
                                 : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, rel, src, 4);
    _mm512_storeu_ps(out, v);
  }
};
template <> struct Gather<double> {
  using I = __m256i;
  static constexpr int L = 8;
  static I load_idx(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static __mmask8 inside(I y, I x, I H, I W) {
    return _mm256_cmplt_epu32_mask(y, H) & _mm256_cmplt_epu32_mask(x, W);
  }
  static I add(I a, int32_t s) { return _mm256_add_epi32(a, _mm256_set1_epi32(s)); }
  static I bcast(int32_t s) { return _mm256_set1_epi32(s); }
  static void run(double* out, const double* src, I rel, __mmask8 m, bool consecutive) {
    const __m512d v = consecutive ? _mm512_maskz_loadu_pd(m, src)
                                  : _mm512_mask_i32gather_pd(_mm512_setzero_pd(), m, rel, src, 8);
    _mm512_storeu_pd(out, v);
  }
};

template <typename T, int NR>
void pack_b(int64_t kc, int64_t nr, const T* b, const int64_t* kb, const int32_t* ky,
            const int32_t* kx, const int64_t* jb, const int32_t* jy, const int32_t* jx, int64_t Hb,
            int64_t Wb, T* out) {
  using G = Gather<T>;
  constexpr int L = G::L, H = NR / L;
  static_assert(NR % L == 0, "micro-panel width must be whole vectors");
  // Offsets of each column relative to the first column of its vector, in 32 bits.
  alignas(64) int32_t rel[NR], yy[NR], xx[NR];
  bool consecutive[H];
  unsigned valid[H];
  for (int h = 0; h < H; ++h) {
    consecutive[h] = true;
    valid[h] = 0;
    const int64_t j0 = h * L;
    for (int l = 0; l < L; ++l) {
      const int64_t j = j0 + l;
      if (j >= nr) { rel[j] = 0; yy[j] = -1; xx[j] = -1; continue; }
      const int64_t r = jb[j] - jb[j0];
      if (r != int32_t(r)) {  // offsets beyond 2^31 elements apart: scalar packing
        pack_b_scalar<T, NR>(kc, nr, b, kb, ky, kx, jb, jy, jx, Hb, Wb, out);
        return;
      }
      rel[j] = int32_t(r);
      yy[j] = jy[j];
      xx[j] = jx[j];
      consecutive[h] = consecutive[h] && r == l;
      valid[h] |= 1u << l;
    }
  }
  if (Hb > INT32_MAX || Wb > INT32_MAX) {
    pack_b_scalar<T, NR>(kc, nr, b, kb, ky, kx, jb, jy, jx, Hb, Wb, out);
    return;
  }
  const typename G::I vH = G::bcast(int32_t(Hb)), vW = G::bcast(int32_t(Wb));
  typename G::I vrel[H], vy[H], vx[H];
  for (int h = 0; h < H; ++h) {
    vrel[h] = G::load_idx(rel + h * L);
    vy[h] = G::load_idx(yy + h * L);
    vx[h] = G::load_idx(xx + h * L);
  }
  for (int64_t k = 0; k < kc; ++k) {
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) {
      const auto m = static_cast<decltype(G::inside(vy[h], vx[h], vH, vW))>(
          G::inside(G::add(vy[h], ky[k]), G::add(vx[h], kx[k]), vH, vW) & valid[h]);
      // A vector with no valid column reads nothing (m == 0) and stores zeros.
      G::run(out + k * NR + h * L, b + kb[k] + (valid[h] ? jb[h * L] : 0), vrel[h], m, consecutive[h]);
    }
  }
}
#else
template <typename T, int NR>
void pack_b(int64_t kc, int64_t nr, const T* b, const int64_t* kb, const int32_t* ky,
            const int32_t* kx, const int64_t* jb, const int32_t* jy, const int32_t* jx, int64_t Hb,
            int64_t Wb, T* out) {
  pack_b_scalar<T, NR>(kc, nr, b, kb, ky, kx, jb, jy, jx, Hb, Wb, out);
}
#endif

// ---- tile store through the column offset table ------------------------------------------------
template <typename T, int NR>
void store_tile_scattered(const T* tile, int64_t mr, int64_t nr, T* c, int64_t c_sm, const int64_t* jc,
                          T* p, int64_t p_sm, const int64_t* jp, const T* bias, int64_t s_bias,
                          Act act, bool overwrite, bool last) {
  for (int64_t i = 0; i < mr; ++i) {
    const T bi = last && bias ? bias[i * s_bias] : T(0);
    for (int64_t j = 0; j < nr; ++j) {
      T z = tile[i * NR + j];
      T* cp = c + i * c_sm + jc[j];
      if (!overwrite) z += *cp;
      if (last) {
        z += bi;
        if (p) p[i * p_sm + jp[j]] = z;
        z = act_scalar(act, z);
      }
      *cp = z;
    }
  }
}

// C[m, j] = act(bias[m]) (or C + bias when accumulating) for an empty reduction.
template <typename T>
void store_empty(const ImplicitGemm<T>& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  Tables jt = tables(3, 1);
  for (int64_t j = n0; j < n1; ++j) {
    fill(g.jax, j, 1, jt);
    for (int64_t m = m0; m < m1; ++m) {
      T z = g.bias ? g.bias[m * g.s_bias] : T(0);
      if (g.p) g.p[m * g.p_sm + jt.p[0]] = z;
      g.c[m * g.c_sm + jt.c[0]] = act_scalar(g.act, z);
    }
  }
}

// ---- one task: rows [m0, m1) x columns [n0, n1) of one job, the job's whole k range ----------
// MR x (NV vectors) register tile: the GEMM's (Blocking<T>) or a 4-row one for jobs with <= 4 rows.
template <typename T, int MR, int NV>
void igemm_task(const ImplicitGemm<T>& g, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  constexpr int NR = NV * lanes<T>();
  if (g.k1 <= g.k0) {
    store_empty(g, m0, m1, n0, n1);
    return;
  }
  const CacheBlocks<T>& cb = CacheBlocks<T>::get();
  const int64_t nc_max = std::min<int64_t>(cb.NC, ceil_div(n1 - n0, NR) * NR);
  const int64_t kc_max = std::min<int64_t>(cb.KC, g.k1 - g.k0);
  T* bufB = static_cast<T*>(tls_buffer(1, sizeof(T) * kc_max * nc_max));
  T* bufA = static_cast<T*>(tls_buffer(0, sizeof(T) * kc_max * cb.MC));
  Tables kt = tables(2, kc_max);
  Tables jt = tables(3, nc_max);
  alignas(64) T tile[MR * NR];

  for (int64_t jc = n0; jc < n1; jc += cb.NC) {
    const int64_t nc = std::min<int64_t>(cb.NC, n1 - jc);
    fill(g.jax, jc, nc, jt);
    for (int64_t pc = g.k0; pc < g.k1; pc += cb.KC) {
      const int64_t kc = std::min<int64_t>(cb.KC, g.k1 - pc);
      fill(g.kax, pc, kc, kt);
      for (int64_t i = 0; i < kc; ++i) { kt.y[i] += int32_t(g.y0); kt.x[i] += int32_t(g.x0); }
      const bool overwrite = pc == g.k0, last = pc + kc == g.k1;
      for (int64_t ic = m0; ic < m1; ic += cb.MC) {
        const int64_t mc = std::min<int64_t>(cb.MC, m1 - ic);
        pack_a_tab<T, MR>(mc, kc, g.a + ic * g.a_sm, g.a_sm, kt.a, bufA);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t nr = std::min<int64_t>(NR, nc - jr);
          // Each B micro-panel is gathered right before its first use (the first ic block), so
          // the microkernels read it from L1/L2 rather than from a 6 MiB block packed earlier;
          // later ic blocks reuse it from the buffer.
          if (ic == m0)
            pack_b<T, NR>(kc, nr, g.b, kt.b, kt.y, kt.x, jt.b + jr, jt.y + jr, jt.x + jr, g.Hb, g.Wb,
                          bufB + jr * kc);
          const int64_t* jcol = jt.c + jr;
          const int64_t* jpre = jt.p + jr;
          bool dense = nr == NR;
          for (int64_t j = 1; dense && j < NR; ++j)
            dense = jcol[j] == jcol[0] + j && (!g.p || jpre[j] == jpre[0] + j);
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t mr = std::min<int64_t>(MR, mc - ir), m = ic + ir;
            T* crow = g.c + m * g.c_sm;
            micro_kernel<T, MR, NV, false>(kc, bufA + ir * kc, 0, 0, mr, bufB + jr * kc, NR, tile,
                                           crow + jcol[0], g.c_sm);
            const T* bias = g.bias ? g.bias + m * g.s_bias : nullptr;
            if (dense) {
              TileOut<T> o;
              o.c = crow + jcol[0]; o.sm = g.c_sm; o.sn = 1;
              o.p = g.p ? g.p + m * g.p_sm + jpre[0] : nullptr; o.psm = g.p_sm; o.psn = 1;
              o.bias = bias; o.s_bias = g.s_bias; o.bias_dim = 0;
              o.act = g.act; o.overwrite = overwrite; o.last = last;
              store_tile<T, NV>(tile, mr, nr, o);
            } else {
              store_tile_scattered<T, NR>(tile, mr, nr, crow, g.c_sm, jcol,
                                          g.p ? g.p + m * g.p_sm : nullptr, g.p_sm, jpre, bias,
                                          g.s_bias, g.act, overwrite, last);
            }
          }
        }
      }
    }
  }
}

// Runs independent jobs (groups, phases, reduction slices), each cut into (M, N) rectangles so
// that every thread has work, on the thread pool.
template <typename T, int MR, int NV>
void run_jobs_tiled(const std::vector<ImplicitGemm<T>>& jobs) {
  constexpr int NR = NV * lanes<T>();
  const int64_t njobs = static_cast<int64_t>(jobs.size());
  if (njobs == 0) return;
  const int64_t threads = num_threads();
  double flops = 0;
  for (const auto& g : jobs) flops += 2.0 * g.M * g.jax.size() * std::max<int64_t>(1, g.k1 - g.k0);
  int64_t parts = 1;
  if (threads > 1 && flops >= 1.0e6)
    while ((njobs * parts) % threads != 0 && njobs * parts < 4 * threads) ++parts;
  struct Split { int64_t tm, tn, mb, nb; };
  std::vector<Split> splits(njobs);
  for (int64_t i = 0; i < njobs; ++i) {
    Split& s = splits[i];
    s.mb = ceil_div(jobs[i].M, MR);
    s.nb = ceil_div(jobs[i].jax.size(), NR);
    // Columns first: each task packs its own B, and A (the weight) is the small operand.
    s.tm = 1;
    s.tn = std::min(parts, s.nb);
    if (s.tn < parts) choose_split(s.mb, s.nb, std::min(parts, s.mb * s.nb), &s.tm, &s.tn);
  }
  auto task = [&](int64_t t, int) {
    const int64_t ji = t / parts, r = t % parts;
    const ImplicitGemm<T>& g = jobs[ji];
    const Split& s = splits[ji];
    if (r >= s.tm * s.tn) return;
    const int64_t im = r / s.tn, in = r % s.tn, N = g.jax.size();
    const int64_t m0 = std::min(g.M, (im * s.mb / s.tm) * MR), m1 = std::min(g.M, ((im + 1) * s.mb / s.tm) * MR);
    const int64_t n0 = std::min(N, (in * s.nb / s.tn) * NR), n1 = std::min(N, ((in + 1) * s.nb / s.tn) * NR);
    if (m0 < m1 && n0 < n1) igemm_task<T, MR, NV>(g, m0, m1, n0, n1);
  };
  if (threads == 1 || flops < 1.0e6) {
    for (int64_t t = 0; t < njobs * parts; ++t) task(t, 0);
  } else {
    parallel_for(njobs * parts, task);
  }
}

// Jobs with at most 4 rows (the input gradient of an RGB stem: 3 input channels) would waste
// most of a 12-row tile; they run on a 4 x 64 tile instead (AVX-512: 16 accumulators).
template <typename T>
void run_jobs(const std::vector<ImplicitGemm<T>>& jobs) {
  using Bk = Blocking<T>;
#if defined(PK_ISA_AVX512)
  bool small = !jobs.empty();
  for (const auto& g : jobs) small = small && g.M <= 4;
  if (small) return run_jobs_tiled<T, 4, 4>(jobs);
#endif
  run_jobs_tiled<T, Bk::MR, Bk::NV>(jobs);
}

// ---- direct stride-1 convolution for small channel counts (AVX-512) ------------------------------
// When the GEMM's m side is small (the LeNet layers: 1-20 channels), every gathered B element
// serves one or two microkernel rows and packing costs as much as the arithmetic. These kernels
// skip packing: each output row is a few vectors along W, and each tap is one masked unaligned
// load of an input row, broadcast-multiplied into up to MB channels' accumulators (forward and
// input gradient: the input gradient of a stride-1 conv is a stride-1 conv of dy with the
// flipped, transposed weight), or one masked load of dy and of x per (channel, tap) pair
// accumulated over every pixel (weight gradient, register tiles of channels x taps).
// Used for stride 1, one group, rows contiguous (unit W stride), m side <= kDirectMaxM.
#if defined(PK_ISA_AVX512)
constexpr int64_t kDirectMaxM = 24;

// Vectors of one ISA width: LaneZ = 512-bit, LaneY = 256-bit (rows of <= 8 floats: on Zen 4 two
// 256-bit FMAs issue per cycle, so narrow rows lose nothing by using half-width vectors).
template <typename T> struct LaneZ;
template <> struct LaneZ<float> {
  using R = __m512; using M = __mmask16;
  static constexpr int L = 16;
  static R zero() { return _mm512_setzero_ps(); }
  static R load(M m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(M m, float* p, R v) { _mm512_mask_storeu_ps(p, m, v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R bcast(float s) { return _mm512_set1_ps(s); }
  static float sum(R v) { return _mm512_reduce_add_ps(v); }
};
template <> struct LaneZ<double> {
  using R = __m512d; using M = __mmask8;
  static constexpr int L = 8;
  static R zero() { return _mm512_setzero_pd(); }
  static R load(M m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static void store(M m, double* p, R v) { _mm512_mask_storeu_pd(p, m, v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static R bcast(double s) { return _mm512_set1_pd(s); }
  static double sum(R v) { return _mm512_reduce_add_pd(v); }
};
template <typename T> struct LaneY;
template <> struct LaneY<float> {
  using R = __m256; using M = __mmask8;
  static constexpr int L = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R load(M m, const float* p) { return _mm256_maskz_loadu_ps(m, p); }
  static void store(M m, float* p, R v) { _mm256_mask_storeu_ps(p, m, v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R bcast(float s) { return _mm256_set1_ps(s); }
  static float sum(R v) {
    alignas(32) float t[8];
    _mm256_store_ps(t, v);
    return ((t[0] + t[1]) + (t[2] + t[3])) + ((t[4] + t[5]) + (t[6] + t[7]));
  }
};
template <> struct LaneY<double> {
  using R = __m256d; using M = __mmask8;
  static constexpr int L = 4;
  static R zero() { return _mm256_setzero_pd(); }
  static R load(M m, const double* p) { return _mm256_maskz_loadu_pd(m, p); }
  static void store(M m, double* p, R v) { _mm256_mask_storeu_pd(p, m, v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R bcast(double s) { return _mm256_set1_pd(s); }
  static double sum(R v) {
    alignas(32) double t[4];
    _mm256_store_pd(t, v);
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
};

template <typename T, typename Ln>
inline typename Ln::R apply_act(Act a, typename Ln::R z) {
  if (a == Act::None) return z;
  alignas(64) T t[Ln::L];
  std::memcpy(t, &z, sizeof z);
  for (int l = 0; l < Ln::L; ++l) t[l] = act_scalar(a, t[l]);
  std::memcpy(&z, t, sizeof z);
  return z;
}

// Lanes l of a vector starting at column x0 with lo <= x0 + l < hi.
template <typename Ln>
inline typename Ln::M lane_mask(int64_t x0, int64_t lo, int64_t hi) {
  constexpr int L = Ln::L;
  const int64_t a = std::max<int64_t>(0, lo - x0), b = std::min<int64_t>(L, hi - x0);
  if (b <= a) return 0;
  const uint32_t bits = (b >= 32 ? 0xffffffffu : ((1u << b) - 1u)) & ~((1u << a) - 1u);
  return static_cast<typename Ln::M>(bits);
}

// One stride-1 convolution in the direct form:
//   out[n, m, oh, ow] = act(bias[m] + sum_{c, r, s} in[n, c, oh - pT + r*dH, ow - pL + s*dW] * wt[m, c, r, s])
// wt given by a base pointer and four strides (negative strides flip it: the input gradient).
template <typename T>
struct DirectConv {
  int64_t N, Cin, H, W, M, OH, OW, R, S, dH, dW, pT, pL;
  const T* in; int64_t si[3];          // n, c, h strides; w stride 1
  const T* wt; int64_t sw[4];          // m, c, r, s strides
  T* out; int64_t so[3];               // n, m, h strides; w stride 1
  T* pre; int64_t sp[3];
  const T* bias; int64_t s_bias;
  Act act;
};

template <typename T, typename Ln, int MB, int VW>
void direct_rows(const DirectConv<T>& d, const T* wpk, int64_t Mp, int64_t n0, int64_t n1, int64_t oh,
                 int64_t* tap_off, int32_t* tap_mask, int64_t* tap_w) {
  constexpr int L = Ln::L;
  constexpr int kMaxS = 16;
  for (int64_t ow0 = 0; ow0 < d.OW; ow0 += VW * L) {
    // Lane masks of every (tap column s, vector v): inside the output row and the input row.
    typename Ln::M omask[VW], xmask[kMaxS][VW];
    for (int v = 0; v < VW; ++v) omask[v] = lane_mask<Ln>(ow0 + v * L, 0, d.OW);
    for (int64_t s = 0; s < d.S; ++s)
      for (int v = 0; v < VW; ++v)
        xmask[s][v] = omask[v] & lane_mask<Ln>(ow0 - d.pL + s * d.dW + v * L, 0, d.W);
    // The taps that land inside the input for this output row, as one flat list (offset of the
    // input run, its lane masks, its weights): a single inner loop keeps the accumulators in
    // registers (GCC spills them across the nested c / r / s loops).
    int64_t ntaps = 0;
    for (int64_t c = 0; c < d.Cin; ++c)
      for (int64_t r = 0; r < d.R; ++r) {
        const int64_t ih = oh - d.pT + r * d.dH;
        if (ih < 0 || ih >= d.H) continue;
        for (int64_t s = 0; s < d.S; ++s) {
          tap_off[ntaps] = c * d.si[1] + ih * d.si[2] + ow0 - d.pL + s * d.dW;
          tap_mask[ntaps] = s;
          tap_w[ntaps] = ((c * d.R + r) * d.S + s) * Mp;
          ++ntaps;
        }
      }
    for (int64_t n = n0; n < n1; ++n) {
    const T* __restrict in = d.in + n * d.si[0];
    for (int64_t m0 = 0; m0 < d.M; m0 += MB) {
      typename Ln::R acc[MB][VW];
#pragma GCC unroll 24
      for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < VW; ++v) acc[i][v] = Ln::zero();
      const T* __restrict wb = wpk + m0;
      for (int64_t t = 0; t < ntaps; ++t) {
        const T* row = in + tap_off[t];
        const typename Ln::M* xm = xmask[tap_mask[t]];
        const T* wv = wb + tap_w[t];
        typename Ln::R xv[VW];
#pragma GCC unroll 4
        for (int v = 0; v < VW; ++v) xv[v] = Ln::load(xm[v], row + v * L);
#pragma GCC unroll 24
        for (int i = 0; i < MB; ++i) {
          const typename Ln::R b = Ln::bcast(wv[i]);
#pragma GCC unroll 4
          for (int v = 0; v < VW; ++v) acc[i][v] = Ln::fma(b, xv[v], acc[i][v]);
        }
      }
      // Through memory with compile-time indices only: indexing acc with the runtime channel
      // count below would make GCC keep acc in memory inside the tap loop.
      alignas(64) T res[MB][VW][L];
#pragma GCC unroll 24
      for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < VW; ++v) std::memcpy(res[i][v], &acc[i][v], sizeof acc[i][v]);
      const int64_t mb = std::min<int64_t>(MB, d.M - m0);
      for (int i = 0; i < mb; ++i) {
        const int64_t m = m0 + i;
        T* orow = d.out + n * d.so[0] + m * d.so[1] + oh * d.so[2] + ow0;
        T* prow = d.pre ? d.pre + n * d.sp[0] + m * d.sp[1] + oh * d.sp[2] + ow0 : nullptr;
        const typename Ln::R bv = Ln::bcast(d.bias ? d.bias[m * d.s_bias] : T(0));
        for (int v = 0; v < VW; ++v) {
          typename Ln::R z;
          std::memcpy(&z, res[i][v], sizeof z);
          z = z + bv;
          if (prow) Ln::store(omask[v], prow + v * L, z);
          z = apply_act<T, Ln>(d.act, z);
          Ln::store(omask[v], orow + v * L, z);
        }
      }
    }
    }
  }
}

template <typename T, typename Ln, int MB, int VW>
void direct_conv_mb(const DirectConv<T>& d) {
  // The weight as [c][r][s][m], m padded with zeros to whole MB blocks, so the broadcasts of one
  // tap are consecutive and every block runs the full register tile.
  const int64_t taps = d.Cin * d.R * d.S, Mp = ceil_div(d.M, MB) * MB;
  std::vector<T> wpk(static_cast<size_t>(taps * Mp), T(0));
  for (int64_t c = 0; c < d.Cin; ++c)
    for (int64_t r = 0; r < d.R; ++r)
      for (int64_t s = 0; s < d.S; ++s)
        for (int64_t m = 0; m < d.M; ++m)
          wpk[((c * d.R + r) * d.S + s) * Mp + m] = d.wt[m * d.sw[0] + c * d.sw[1] + r * d.sw[2] + s * d.sw[3]];
  // Tasks: one output row for a block of up to 16 images (the tap list is built once per task).
  constexpr int64_t kImages = 16;
  auto task = [&](int64_t t, int) {
    char* buf = static_cast<char*>(tls_buffer(4, static_cast<size_t>(taps) * 20 + 64));
    int64_t* off = reinterpret_cast<int64_t*>(buf);
    int64_t* wo = off + taps;
    int32_t* mk = reinterpret_cast<int32_t*>(wo + taps);
    const int64_t oh = t % d.OH, n0 = (t / d.OH) * kImages;
    direct_rows<T, Ln, MB, VW>(d, wpk.data(), Mp, n0, std::min(d.N, n0 + kImages), oh, off, mk, wo);
  };
  const int64_t tasks = d.OH * ceil_div(d.N, kImages);
  const double flops = 2.0 * d.N * d.OH * d.OW * d.M * taps;
  if (num_threads() == 1 || flops < 1.0e6) {
    for (int64_t t = 0; t < tasks; ++t) task(t, 0);
  } else {
    parallel_for(tasks, task);
  }
}

// Register tile: MB channels x VW vectors along the row (MB * VW <= 24 accumulators), MB the
// smallest multiple of 4 that covers the channels (or the cap).
template <typename T>
void direct_conv(const DirectConv<T>& d) {
  using Z = LaneZ<T>;
  using Y = LaneY<T>;
  if (d.OW <= Y::L) {  // one half-width vector per row
    switch (d.M <= 2 ? d.M : 2 + std::min<int64_t>(6, ceil_div(d.M, 4))) {
      case 1: return direct_conv_mb<T, Y, 1, 1>(d);
      case 2: return direct_conv_mb<T, Y, 2, 1>(d);
      case 3: return direct_conv_mb<T, Y, 4, 1>(d);
      case 4: return direct_conv_mb<T, Y, 8, 1>(d);
      case 5: return direct_conv_mb<T, Y, 12, 1>(d);
      case 6: return direct_conv_mb<T, Y, 16, 1>(d);
      case 7: return direct_conv_mb<T, Y, 20, 1>(d);
      default: return direct_conv_mb<T, Y, 24, 1>(d);
    }
  }
  const int VW = d.OW <= Z::L ? 1 : 2;
  if (d.M == 1) return VW == 1 ? direct_conv_mb<T, Z, 1, 1>(d) : direct_conv_mb<T, Z, 1, 2>(d);
  if (d.M == 2) return VW == 1 ? direct_conv_mb<T, Z, 2, 1>(d) : direct_conv_mb<T, Z, 2, 2>(d);
  if (VW == 1 && d.M <= 12) {  // steps of 2 channels: e.g. LeNet's 10 wastes no row
    switch (ceil_div(d.M, 2)) {
      case 2: return direct_conv_mb<T, Z, 4, 1>(d);
      case 3: return direct_conv_mb<T, Z, 6, 1>(d);
      case 4: return direct_conv_mb<T, Z, 8, 1>(d);
      case 5: return direct_conv_mb<T, Z, 10, 1>(d);
      default: return direct_conv_mb<T, Z, 12, 1>(d);
    }
  }
  if (VW == 1) {
    switch (std::min<int64_t>(6, ceil_div(d.M, 4))) {
      case 4: return direct_conv_mb<T, Z, 16, 1>(d);
      case 5: return direct_conv_mb<T, Z, 20, 1>(d);
      default: return direct_conv_mb<T, Z, 24, 1>(d);
    }
  }
  switch (std::min<int64_t>(3, ceil_div(d.M, 4))) {
    case 1: return direct_conv_mb<T, Z, 4, 2>(d);
    case 2: return direct_conv_mb<T, Z, 8, 2>(d);
    default: return direct_conv_mb<T, Z, 12, 2>(d);
  }
}

// Weight gradient of a stride-1 conv, direct: tiles of MB channels x TB taps, each reduced over
// every pixel in registers (one task per tile: no partial sums, no race).
//   dw[m, c, r, s] = sum_{n, oh, ow} dy[n, m, oh, ow] * x[n, c, oh - pT + r*dH, ow - pL + s*dW]
template <typename T, typename Ln, int MB, int TB>
void direct_wgrad_tile(const ConvArgs<T>& q, int64_t m0, int64_t t0) {
  constexpr int L = Ln::L;
  const int64_t taps = q.C * q.R * q.S, RS = q.R * q.S;
  const int64_t mb = std::min<int64_t>(MB, q.K - m0), tb = std::min<int64_t>(TB, taps - t0);
  const int64_t nv = ceil_div(q.OW, L);
  int64_t xoff[TB], ry[TB];
  // masks[v * TB + j]: lanes of vector v inside the output row and, shifted by tap j, the input row.
  std::vector<typename Ln::M> masks(static_cast<size_t>(nv * TB));
  for (int j = 0; j < TB; ++j) {
    const int64_t t = t0 + std::min<int64_t>(j, tb - 1), c = t / RS, r = (t / q.S) % q.R, s = t % q.S;
    const int64_t sx = s * q.dW - q.pW;
    ry[j] = r * q.dH - q.pH;
    xoff[j] = c * q.sx[1] + ry[j] * q.sx[2] + sx;
    for (int64_t v = 0; v < nv; ++v)
      masks[v * TB + j] = j < tb ? static_cast<typename Ln::M>(lane_mask<Ln>(v * L, 0, q.OW) &
                                                               lane_mask<Ln>(v * L + sx, 0, q.W))
                                 : 0;
  }
  typename Ln::R acc[MB][TB];
#pragma GCC unroll 8
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < TB; ++j) acc[i][j] = Ln::zero();
  // Images innermost: the tap masks and row offsets stay fixed (in registers) across n.
  for (int64_t oh = 0; oh < q.OH; ++oh)
    for (int64_t v = 0; v < nv; ++v) {
      const int64_t ow0 = v * L;
      const typename Ln::M om = lane_mask<Ln>(ow0, 0, q.OW);
      typename Ln::M mj[TB];
      const T* xp[TB];
      const T* dp[MB];
#pragma GCC unroll 8
      for (int jj = 0; jj < TB; ++jj) {
        const bool row_ok = oh + ry[jj] >= 0 && oh + ry[jj] < q.H;
        mj[jj] = row_ok ? masks[v * TB + jj] : 0;
        xp[jj] = q.x + oh * q.sx[2] + xoff[jj] + ow0;
      }
      // Rows past the last channel re-read the last one: their sums are never stored, and one
      // shared mask leaves the mask registers to the taps.
#pragma GCC unroll 8
      for (int i = 0; i < MB; ++i)
        dp[i] = q.y + (m0 + std::min<int64_t>(i, mb - 1)) * q.sy[1] + oh * q.sy[2] + ow0;
      for (int64_t n = 0; n < q.N; ++n) {
        typename Ln::R dv[MB];
#pragma GCC unroll 8
        for (int i = 0; i < MB; ++i) dv[i] = Ln::load(om, dp[i] + n * q.sy[0]);
#pragma GCC unroll 8
        for (int jj = 0; jj < TB; ++jj) {
          const typename Ln::R xv = Ln::load(mj[jj], xp[jj] + n * q.sx[0]);
#pragma GCC unroll 8
          for (int i = 0; i < MB; ++i) acc[i][jj] = Ln::fma(dv[i], xv, acc[i][jj]);
        }
      }
    }
  T sums[MB][TB];  // compile-time indices only (see direct_rows)
#pragma GCC unroll 8
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < TB; ++j) sums[i][j] = Ln::sum(acc[i][j]);
  for (int i = 0; i < mb; ++i)
    for (int j = 0; j < tb; ++j) {
      const int64_t t = t0 + j, c = t / RS, r = (t / q.S) % q.R, s = t % q.S;
      q.w[(m0 + i) * q.sw[0] + c * q.sw[1] + r * q.sw[2] + s * q.sw[3]] = sums[i][j];
    }
}

template <typename T>
void direct_wgrad(const ConvArgs<T>& q) {
  constexpr int MB = 4, TB = 6;
  const int64_t taps = q.C * q.R * q.S, mt = ceil_div(q.K, MB), tt = ceil_div(taps, TB);
  const bool narrow = q.OW <= LaneY<T>::L;
  auto task = [&](int64_t t, int) {
    if (narrow) direct_wgrad_tile<T, LaneY<T>, MB, TB>(q, (t / tt) * MB, (t % tt) * TB);
    else direct_wgrad_tile<T, LaneZ<T>, MB, TB>(q, (t / tt) * MB, (t % tt) * TB);
  };
  if (num_threads() == 1) {
    for (int64_t t = 0; t < mt * tt; ++t) task(t, 0);
  } else {
    parallel_for(mt * tt, task);
  }
}

template <typename T>
bool direct_ok(const ConvArgs<T>& q, int64_t m_side) {
  // PYKERNELS_CONV_DIRECT=0 sends every shape to the implicit GEMM (for measurements); read once.
  static const bool enabled = [] {
    const char* env = std::getenv("PYKERNELS_CONV_DIRECT");
    return !(env && env[0] == '0');
  }();
  if (!enabled) return false;
  return q.groups == 1 && q.sH == 1 && q.sW == 1 && m_side <= kDirectMaxM && q.S <= 16 && q.sx[3] == 1 &&
         q.sy[3] == 1 && (!q.preact || q.sp[3] == 1);
}

template <typename T>
bool try_direct_forward(const ConvArgs<T>& q) {
  if (!direct_ok(q, q.K)) return false;
  DirectConv<T> d{q.N, q.C, q.H, q.W, q.K, q.OH, q.OW, q.R, q.S, q.dH, q.dW, q.pH, q.pW,
                  q.x, {q.sx[0], q.sx[1], q.sx[2]},
                  q.w, {q.sw[0], q.sw[1], q.sw[2], q.sw[3]},
                  q.y, {q.sy[0], q.sy[1], q.sy[2]},
                  q.preact, {q.sp[0], q.sp[1], q.sp[2]},
                  q.bias, q.s_bias, q.act};
  direct_conv(d);
  return true;
}

template <typename T>
bool try_direct_backward_input(const ConvArgs<T>& q) {
  if (!direct_ok(q, q.C)) return false;
  // dx = stride-1 conv of dy with wt[c, k, r, s] = w[k, c, R-1-r, S-1-s], padding (R-1)*dH - pH.
  DirectConv<T> d{q.N, q.K, q.OH, q.OW, q.C, q.H, q.W, q.R, q.S, q.dH, q.dW,
                  (q.R - 1) * q.dH - q.pH, (q.S - 1) * q.dW - q.pW,
                  q.y, {q.sy[0], q.sy[1], q.sy[2]},
                  q.w + (q.R - 1) * q.sw[2] + (q.S - 1) * q.sw[3], {q.sw[1], q.sw[0], -q.sw[2], -q.sw[3]},
                  q.x, {q.sx[0], q.sx[1], q.sx[2]},
                  nullptr, {0, 0, 0},
                  q.bias, q.s_bias, Act::None};
  direct_conv(d);
  return true;
}

template <typename T>
bool try_direct_backward_weight(const ConvArgs<T>& q) {
  if (!direct_ok(q, q.K) || q.N * q.OH * q.OW == 0) return false;
  direct_wgrad(q);
  return true;
}
#else
template <typename T> bool try_direct_forward(const ConvArgs<T>&) { return false; }
template <typename T> bool try_direct_backward_input(const ConvArgs<T>&) { return false; }
template <typename T> bool try_direct_backward_weight(const ConvArgs<T>&) { return false; }
#endif

// ---- the three passes ----------------------------------------------------------------------------
template <typename T>
void forward_impl(const ConvArgs<T>& q) {
  const int64_t G = q.groups, Cg = q.C / G, Kg = q.K / G;
  if (q.N <= 0 || Kg <= 0 || q.OH <= 0 || q.OW <= 0) return;
  if (try_direct_forward(q)) return;
  std::vector<ImplicitGemm<T>> jobs;
  for (int64_t gi = 0; gi < G; ++gi) {
    ImplicitGemm<T> g{};
    g.M = Kg;
    // k = (c, r, s)
    g.kax.n[0] = Cg; g.kax.n[1] = q.R; g.kax.n[2] = q.S;
    g.kax.a[0] = q.sw[1]; g.kax.a[1] = q.sw[2]; g.kax.a[2] = q.sw[3];
    g.kax.b[0] = q.sx[1]; g.kax.b[1] = q.dH * q.sx[2]; g.kax.b[2] = q.dW * q.sx[3];
    g.kax.y[1] = q.dH; g.kax.x[2] = q.dW;
    // j = (n, oh, ow)
    g.jax.n[0] = q.N; g.jax.n[1] = q.OH; g.jax.n[2] = q.OW;
    g.jax.b[0] = q.sx[0]; g.jax.b[1] = q.sH * q.sx[2]; g.jax.b[2] = q.sW * q.sx[3];
    g.jax.y[1] = q.sH; g.jax.x[2] = q.sW;
    g.jax.c[0] = q.sy[0]; g.jax.c[1] = q.sy[2]; g.jax.c[2] = q.sy[3];
    g.jax.p[0] = q.sp[0]; g.jax.p[1] = q.sp[2]; g.jax.p[2] = q.sp[3];
    g.a = q.w + gi * Kg * q.sw[0]; g.a_sm = q.sw[0];
    g.b = q.x + gi * Cg * q.sx[1] - q.pH * q.sx[2] - q.pW * q.sx[3];
    g.Hb = q.H; g.Wb = q.W; g.y0 = -q.pH; g.x0 = -q.pW;
    g.c = q.y + gi * Kg * q.sy[1]; g.c_sm = q.sy[1];
    g.p = q.preact ? q.preact + gi * Kg * q.sp[1] : nullptr; g.p_sm = q.sp[1];
    g.bias = q.bias ? q.bias + gi * Kg * q.s_bias : nullptr; g.s_bias = q.s_bias;
    g.act = q.act;
    g.k0 = 0; g.k1 = g.kax.size();
    jobs.push_back(g);
  }
  run_jobs(jobs);
}

// First tap r in [0, R) with (q + p - r*d) divisible by s, the tap step, and the tap count.
void phase_taps(int64_t q, int64_t p, int64_t d, int64_t s, int64_t R, int64_t* r0, int64_t* step,
                int64_t* count) {
  *r0 = -1;
  for (int64_t r = 0; r < R && r < s; ++r)
    if ((((q + p - r * d) % s) + s) % s == 0) { *r0 = r; break; }
  int64_t g = s, e = d;
  while (e) { const int64_t t = g % e; g = e; e = t; }  // gcd(s, d)
  *step = s / g;
  *count = *r0 < 0 ? 0 : (R - *r0 + *step - 1) / *step;
}

template <typename T>
void backward_input_impl(const ConvArgs<T>& q) {
  const int64_t G = q.groups, Cg = q.C / G, Kg = q.K / G;
  if (q.N <= 0 || Cg <= 0 || q.H <= 0 || q.W <= 0) return;
  if (try_direct_backward_input(q)) return;
  std::vector<ImplicitGemm<T>> jobs;
  for (int64_t qh = 0; qh < std::min(q.sH, q.H); ++qh) {
    int64_t r0, rstep, Rt;
    phase_taps(qh, q.pH, q.dH, q.sH, q.R, &r0, &rstep, &Rt);
    for (int64_t qw = 0; qw < std::min(q.sW, q.W); ++qw) {
      int64_t s0, sstep, St;
      phase_taps(qw, q.pW, q.dW, q.sW, q.S, &s0, &sstep, &St);
      // Input pixels of this phase: ih = qh + sH*a, a < Ha (and the same along W).
      const int64_t Ha = (q.H - qh + q.sH - 1) / q.sH, Wa = (q.W - qw + q.sW - 1) / q.sW;
      // Tap r0 + t*rstep reads dy row a + e0 - t*ystep.
      const int64_t e0 = Rt ? (qh + q.pH - r0 * q.dH) / q.sH : 0;
      const int64_t f0 = St ? (qw + q.pW - s0 * q.dW) / q.sW : 0;
      const int64_t ystep = rstep * q.dH / q.sH, xstep = sstep * q.dW / q.sW;
      for (int64_t gi = 0; gi < G; ++gi) {
        ImplicitGemm<T> g{};
        g.M = Cg;
        // k = (o, t, u): output channel o of the group, tap r0 + t*rstep, s0 + u*sstep
        g.kax.n[0] = Kg; g.kax.n[1] = Rt; g.kax.n[2] = St;
        g.kax.a[0] = q.sw[0]; g.kax.a[1] = rstep * q.sw[2]; g.kax.a[2] = sstep * q.sw[3];
        g.kax.b[0] = q.sy[1]; g.kax.b[1] = -ystep * q.sy[2]; g.kax.b[2] = -xstep * q.sy[3];
        g.kax.y[1] = -ystep; g.kax.x[2] = -xstep;
        // j = (n, a, b)
        g.jax.n[0] = q.N; g.jax.n[1] = Ha; g.jax.n[2] = Wa;
        g.jax.b[0] = q.sy[0]; g.jax.b[1] = q.sy[2]; g.jax.b[2] = q.sy[3];
        g.jax.y[1] = 1; g.jax.x[2] = 1;
        g.jax.c[0] = q.sx[0]; g.jax.c[1] = q.sH * q.sx[2]; g.jax.c[2] = q.sW * q.sx[3];
        g.a = q.w + gi * Kg * q.sw[0] + (Rt ? r0 : 0) * q.sw[2] + (St ? s0 : 0) * q.sw[3];
        g.a_sm = q.sw[1];
        g.b = q.y + gi * Kg * q.sy[1] + e0 * q.sy[2] + f0 * q.sy[3];
        g.Hb = q.OH; g.Wb = q.OW; g.y0 = e0; g.x0 = f0;
        g.c = q.x + gi * Cg * q.sx[1] + qh * q.sx[2] + qw * q.sx[3]; g.c_sm = q.sx[1];
        g.bias = q.bias ? q.bias + gi * Cg * q.s_bias : nullptr; g.s_bias = q.s_bias;
        g.act = Act::None;
        g.k0 = 0; g.k1 = g.kax.size();
        jobs.push_back(g);
      }
    }
  }
  run_jobs(jobs);
}

template <typename T>
void backward_weight_impl(const ConvArgs<T>& q) {
  using Bk = Blocking<T>;
  constexpr int MR = Bk::MR, NR = Bk::NV * lanes<T>();
  const int64_t G = q.groups, Cg = q.C / G, Kg = q.K / G, taps = Cg * q.R * q.S;
  if (Kg <= 0 || taps <= 0) return;
  if (try_direct_backward_weight(q)) return;
  const int64_t P = q.N * q.OH * q.OW;
  // Reduction slices: 1 when the weight has enough tiles for every thread, else one per thread
  // (each into its own partial weight; a slice is at least 256 pixels long).
  const int64_t threads = num_threads();
  const int64_t tiles = G * ceil_div(Kg, MR) * ceil_div(taps, NR);
  int64_t slices = 1;
  if (threads > 1 && tiles < 2 * threads && 2.0 * Kg * taps * P * G >= 1.0e6)
    slices = std::max<int64_t>(1, std::min<int64_t>(threads, P / 256));
  std::vector<T> partial(slices > 1 ? static_cast<size_t>(slices * G * Kg * taps) : 0);
  std::vector<ImplicitGemm<T>> jobs;
  for (int64_t sl = 0; sl < slices; ++sl)
    for (int64_t gi = 0; gi < G; ++gi) {
      ImplicitGemm<T> g{};
      g.M = Kg;
      // k = (n, oh, ow)
      g.kax.n[0] = q.N; g.kax.n[1] = q.OH; g.kax.n[2] = q.OW;
      g.kax.a[0] = q.sy[0]; g.kax.a[1] = q.sy[2]; g.kax.a[2] = q.sy[3];
      g.kax.b[0] = q.sx[0]; g.kax.b[1] = q.sH * q.sx[2]; g.kax.b[2] = q.sW * q.sx[3];
      g.kax.y[1] = q.sH; g.kax.x[2] = q.sW;
      // j = (c, r, s)
      g.jax.n[0] = Cg; g.jax.n[1] = q.R; g.jax.n[2] = q.S;
      g.jax.b[0] = q.sx[1]; g.jax.b[1] = q.dH * q.sx[2]; g.jax.b[2] = q.dW * q.sx[3];
      g.jax.y[1] = q.dH; g.jax.x[2] = q.dW;
      g.a = q.y + gi * Kg * q.sy[1]; g.a_sm = q.sy[1];
      g.b = q.x + gi * Cg * q.sx[1] - q.pH * q.sx[2] - q.pW * q.sx[3];
      g.Hb = q.H; g.Wb = q.W; g.y0 = -q.pH; g.x0 = -q.pW;
      if (slices > 1) {  // partial weight [Kg, Cg*R*S], contiguous
        g.c = partial.data() + (sl * G + gi) * Kg * taps; g.c_sm = taps;
        g.jax.c[0] = q.R * q.S; g.jax.c[1] = q.S; g.jax.c[2] = 1;
      } else {
        g.c = q.w + gi * Kg * q.sw[0]; g.c_sm = q.sw[0];
        g.jax.c[0] = q.sw[1]; g.jax.c[1] = q.sw[2]; g.jax.c[2] = q.sw[3];
      }
      g.act = Act::None;
      g.k0 = sl * P / slices; g.k1 = (sl + 1) * P / slices;
      jobs.push_back(g);
    }
  run_jobs(jobs);
  if (slices == 1) return;
  for (int64_t gi = 0; gi < G; ++gi)
    for (int64_t o = 0; o < Kg; ++o)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < q.R; ++r)
          for (int64_t s = 0; s < q.S; ++s) {
            const int64_t e = (o * Cg + c) * q.R * q.S + r * q.S + s;
            T sum = T(0);
            for (int64_t sl = 0; sl < slices; ++sl) sum += partial[(sl * G + gi) * Kg * taps + e];
            q.w[(gi * Kg + o) * q.sw[0] + c * q.sw[1] + r * q.sw[2] + s * q.sw[3]] = sum;
          }
}

// dz = dy * act'(saved) and dbias[k] = sum over n, oh, ow of dz; one task per block of channels.
template <typename T>
void backward_bias_impl(const ConvBiasGradArgs<T>& e) {
  if (e.K <= 0) return;
  const int64_t per_channel = e.N * e.OH * e.OW;
  auto channel = [&](int64_t k) {
    double sum = 0.0;
    for (int64_t n = 0; n < e.N; ++n)
      for (int64_t h = 0; h < e.OH; ++h) {
        const T* dy = e.dy + n * e.sdy[0] + k * e.sdy[1] + h * e.sdy[2];
        const T* sv = e.saved ? e.saved + n * e.ss[0] + k * e.ss[1] + h * e.ss[2] : nullptr;
        T* dz = e.dz ? e.dz + n * e.sdz[0] + k * e.sdz[1] + h * e.sdz[2] : nullptr;
        if (!dz) {
          for (int64_t w = 0; w < e.OW; ++w) sum += dy[w * e.sdy[3]];
          continue;
        }
        for (int64_t w = 0; w < e.OW; ++w) {
          const T v = e.act == Act::None ? dy[w * e.sdy[3]]
                                         : dy[w * e.sdy[3]] * act_grad(e.act, sv[w * e.ss[3]]);
          dz[w * e.sdz[3]] = v;
          sum += v;
        }
      }
    if (e.dbias) e.dbias[k * e.s_dbias] = static_cast<T>(sum);
  };
  if (per_channel * e.K < 65536 || num_threads() == 1) {
    for (int64_t k = 0; k < e.K; ++k) channel(k);
  } else {
    parallel_for(e.K, [&](int64_t k, int) { channel(k); });
  }
}

}  // namespace

void conv2d_forward(const ConvArgs<float>& a) { forward_impl(a); }
void conv2d_forward(const ConvArgs<double>& a) { forward_impl(a); }
void conv2d_backward_input(const ConvArgs<float>& a) { backward_input_impl(a); }
void conv2d_backward_input(const ConvArgs<double>& a) { backward_input_impl(a); }
void conv2d_backward_weight(const ConvArgs<float>& a) { backward_weight_impl(a); }
void conv2d_backward_weight(const ConvArgs<double>& a) { backward_weight_impl(a); }
void conv2d_backward_bias(const ConvBiasGradArgs<float>& a) { backward_bias_impl(a); }
void conv2d_backward_bias(const ConvBiasGradArgs<double>& a) { backward_bias_impl(a); }

}  // namespace PK_NS
}  // namespace pk
