// gemm.cpp — packed, blocked GEMM with a fused epilogue, for float and double.
//
// Computes, for every batch index b (any strides, stride 0 = broadcast):
//     z = A[b] @ B[b] (+ C[b] if accumulate) (+ bias),   C[b] = act(z),   preact[b] = z (optional)
// A [M, K], B [K, N], C [M, N]. Transposed operands are just other strides: the backward of
// Linear (dY @ W, dY^T @ X) calls this with swapped strides, never with a materialised transpose.
//
// Compiled three times (see isa.h / CMakeLists.txt): AVX-512, AVX2+FMA and generic SSE2, each
// in its own namespace; bindings.cpp picks one at import.
//
// Blocking (BLIS-style five loops around a register-tiled microkernel):
//   jc over N in steps of NC     B block  KC x NC  packed, lives in L3 (32 MiB shared here)
//    pc over K in steps of KC    (the epilogue runs on the last pc step only)
//     ic over M in steps of MC   A block  MC x KC  packed, lives in L2 (1-2 MiB per core)
//      jr over NC in steps of NR B micro-panel KC x NR stays in L1 across the ir loop
//       ir over MC in steps of MR microkernel: MR x NR accumulators in registers,
//                                 one broadcast of A and NV vector loads of B per k.
//   AVX-512 float: MR x NR = 12 x 32 (24 zmm accumulators + 2 B vectors + 1 broadcast of 32
//   registers). One k step is 24 FMAs (24 cycles at one zmm FMA per cycle on Zen 4, 12 on a
//   two-FMA-port Xeon) against 128 B of B and 48 B of A: 7 B/cycle, which L2 sustains, so the
//   micro-panels need not fit L1 and KC is chosen to make the C tile's read-modify-write rare.
//   KC = 512: B micro-panel 64 KiB (L2), A micro-panel 24 KiB, one C tile pass per 512 k.
//   MC = 240: A block 240 x 512 x 4 B = 480 KiB, half of Zen 4's 1 MiB L2 (a quarter of a
//   Xeon's 2 MiB), leaving room for the B micro-panel and C lines.
//   NC = 3072: B block 6 MiB per thread, a share of the 32 MiB L3.
//   Measured on this machine (bench/NOTES_gemm.md, v2 -> v3): KC 256 -> 512 gave +3-5%.
//   Edges: packing pads A and B with zeros to whole MR/NR panels, the microkernel always runs the
//   full tile into a small buffer, and only the valid mr x nr corner is written back — no scalar
//   tail loops in the k dimension.
// Threads: the batch x (M, N) grid is cut into tasks (2-D split of one matrix when batch is
// smaller than the thread count); each task packs into its own thread-local buffers, so calls are
// reentrant and no task waits on another.
//
// Test: pytest tests/test_gemm.py      Benchmark: python -m pykernels bench gemm
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common.h"
#include "isa.h"

namespace pk {
namespace PK_NS {
namespace {

template <typename T> struct Blocking;
#if defined(PK_ISA_AVX512)
template <> struct Blocking<float>  { static constexpr int MR = 12, NV = 2, KC = 512, MC = 240, NC = 3072; };
template <> struct Blocking<double> { static constexpr int MR = 12, NV = 2, KC = 512, MC = 120, NC = 1536; };
#elif defined(PK_ISA_AVX2)
template <> struct Blocking<float>  { static constexpr int MR = 6, NV = 2, KC = 256, MC = 192, NC = 3072; };
template <> struct Blocking<double> { static constexpr int MR = 6, NV = 2, KC = 256, MC = 96, NC = 2048; };
#else
template <> struct Blocking<float>  { static constexpr int MR = 4, NV = 2, KC = 256, MC = 128, NC = 2048; };
template <> struct Blocking<double> { static constexpr int MR = 4, NV = 2, KC = 256, MC = 64, NC = 2048; };
#endif

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Cache blocking actually used: the defaults above, or PYKERNELS_GEMM_BLOCKING="KC,MC,NC" (read
// once; MC and NC are rounded to whole MR / NR panels) for the experiments in bench/NOTES_gemm.md.
template <typename T>
struct CacheBlocks {
  int64_t KC, MC, NC;
  static const CacheBlocks& get() {
    static const CacheBlocks cb = [] {
      using Bk = Blocking<T>;
      constexpr int NR = Bk::NV * lanes<T>();
      CacheBlocks c{Bk::KC, Bk::MC, Bk::NC};
      if (const char* env = std::getenv("PYKERNELS_GEMM_BLOCKING")) {
        long kc = 0, mc = 0, nc = 0;
        if (std::sscanf(env, "%ld,%ld,%ld", &kc, &mc, &nc) == 3 && kc > 0 && mc > 0 && nc > 0) {
          c.KC = kc;
          c.MC = std::max<int64_t>(1, mc / Bk::MR) * Bk::MR;
          c.NC = std::max<int64_t>(1, nc / NR) * NR;
        }
      }
      return c;
    }();
    return cb;
  }
};

// Per-thread packing buffers: grown on demand, never shared between threads.
void* tls_buffer(int which, size_t bytes) {
  struct Buf {
    void* p = nullptr;
    size_t cap = 0;
    ~Buf() { std::free(p); }
  };
  static thread_local Buf bufs[2];
  Buf& b = bufs[which];
  if (b.cap < bytes) {
    std::free(b.p);
    b.cap = (bytes + 4095) / 4096 * 4096;
    b.p = std::aligned_alloc(64, b.cap);
  }
  return b.p;
}

// ---- activations -------------------------------------------------------------------------
template <typename T> inline T act_scalar(Act a, T z) {
  switch (a) {
    case Act::Relu: return z < T(0) ? T(0) : z;  // NaN passes through, like torch.relu
    case Act::Gelu: return T(0.5) * z * (T(1) + std::erf(z * T(0.70710678118654752440)));
    case Act::Tanh: return std::tanh(z);
    case Act::Sigmoid: return T(1) / (T(1) + std::exp(-z));
    default: return z;
  }
}

template <typename T> inline V<T> act_vec(Act a, V<T> z) {
  if (a == Act::None) return z;
  if (a == Act::Relu) return z < T(0) ? V<T>{} : z;
  for (int l = 0; l < lanes<T>(); ++l) z[l] = act_scalar(a, z[l]);
  return z;
}

// d act(z) / dz written in terms of what the forward saved (y, or z for gelu).
template <typename T> inline T act_grad(Act a, T saved) {
  switch (a) {
    case Act::Relu: return saved > T(0) ? T(1) : T(0);
    case Act::Gelu: {
      T cdf = T(0.5) * (T(1) + std::erf(saved * T(0.70710678118654752440)));
      T pdf = std::exp(T(-0.5) * saved * saved) * T(0.39894228040143267794);
      return cdf + saved * pdf;
    }
    case Act::Tanh: return T(1) - saved * saved;
    case Act::Sigmoid: return saved * (T(1) - saved);
    default: return T(1);
  }
}

// ---- packing -----------------------------------------------------------------------------
// A block [mc, kc] -> panels of MR rows, each stored k-major: out[panel][k][MR], zero-padded.
template <typename T, int MR>
void pack_a(int64_t mc, int64_t kc, const T* a, int64_t sm, int64_t sk, T* out) {
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - i0);
    T* o = out + i0 * kc;
    const T* src = a + i0 * sm;
    if (mr == MR && sm == 1) {  // column-major A (a transposed view): MR contiguous values per k
      for (int64_t k = 0; k < kc; ++k) std::memcpy(o + k * MR, src + k * sk, MR * sizeof(T));
    } else if (mr == MR) {  // row-major A: MR row streams, contiguous stores
      const T* rows[MR];
      for (int i = 0; i < MR; ++i) rows[i] = src + i * sm;
      for (int64_t k = 0; k < kc; ++k) {
#pragma GCC unroll 16
        for (int i = 0; i < MR; ++i) o[k * MR + i] = rows[i][k * sk];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int i = 0; i < MR; ++i) o[k * MR + i] = i < mr ? src[i * sm + k * sk] : T(0);
    }
  }
}

// B block [kc, nc] -> panels of NR columns, each stored k-major: out[panel][k][NR], zero-padded.
template <typename T, int NR>
void pack_b(int64_t kc, int64_t nc, const T* b, int64_t sk, int64_t sn, T* out) {
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    const int64_t nr = std::min<int64_t>(NR, nc - j0);
    T* o = out + j0 * kc;
    const T* src = b + j0 * sn;
    if (nr == NR && sn == 1) {  // row-major B: one contiguous run of NR per k
      for (int64_t k = 0; k < kc; ++k) std::memcpy(o + k * NR, src + k * sk, NR * sizeof(T));
    } else if (sk == 1 && nr == NR) {
      // column-major B (W^T of a Linear): NR column streams advancing together, so their
      // cache lines stay in L1 while the packed panel is written contiguously (writing one
      // column at a time instead strides by NR elements through a panel larger than L1).
      const T* cols[NR];
      for (int j = 0; j < NR; ++j) cols[j] = src + j * sn;
      for (int64_t k = 0; k < kc; ++k) {
#pragma GCC unroll 32
        for (int j = 0; j < NR; ++j) o[k * NR + j] = cols[j][k];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k)
        for (int64_t j = 0; j < NR; ++j) o[k * NR + j] = j < nr ? src[k * sk + j * sn] : T(0);
    }
  }
}

// ---- microkernel: tile[MR][NR] = sum_k A[i, k] (outer) B[k, 0:NR] ----------------------------
// A is a packed panel (pa[k * MR + i]) or, with DIRECT_A, read in place from MR rows
// (pa + i * a_si + k * a_sk; rows past `mr` repeat the last row and are discarded later).
// B rows are NR contiguous values b_sk apart: NR in a packed panel, the row stride of B in place.
template <typename T, int MR, int NV, bool DIRECT_A>
inline void micro_kernel(int64_t kc, const T* __restrict pa, int64_t a_si, int64_t a_sk, int64_t mr,
                         const T* __restrict pb, int64_t b_sk, T* __restrict tile, const T* c,
                         int64_t ldc) {
  constexpr int L = lanes<T>();
  constexpr int NR = NV * L;
  // The C tile is read back after the k loop: start fetching its rows now (MR rows at a
  // stride the hardware prefetcher does not follow), so the loads hit L1 by then.
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    __builtin_prefetch(c + i * ldc, 1, 3);
    __builtin_prefetch(c + i * ldc + NR - 1, 1, 3);
  }
  const T* ar[MR];
  if (DIRECT_A)
    for (int i = 0; i < MR; ++i) ar[i] = pa + (i < mr ? i : mr - 1) * a_si;
  V<T> acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = V<T>{};
  for (int64_t k = 0; k < kc; ++k) {
    V<T> bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = vload(pb + k * b_sk + j * L);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V<T> av = vbcast(DIRECT_A ? ar[i][k * a_sk] : pa[k * MR + i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] += av * bv[j];
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) vstore(tile + i * NR + j * L, acc[i][j]);
}

// ---- write a finished tile back to C, with the epilogue on the last k block ----------------
template <typename T>
struct TileOut {
  T* c; int64_t sm, sn;   // C at the tile's corner
  T* p; int64_t psm, psn; // preact at the tile's corner (or nullptr)
  const T* bias;          // bias at the tile's first row (bias_dim 0) or column (bias_dim 1)
  int64_t s_bias; int bias_dim;
  Act act;
  bool overwrite, last;
};

template <typename T, int NV>
void store_tile(const T* tile, int64_t mr, int64_t nr, const TileOut<T>& o) {
  constexpr int L = lanes<T>();
  constexpr int NR = NV * L;
  const bool epi = o.last;
  const bool vec_ok = nr == NR && o.sn == 1 && (!epi || !o.p || o.psn == 1) &&
                      (!epi || !o.bias || o.bias_dim == 0 || o.s_bias == 1);
  if (vec_ok) {
    for (int64_t i = 0; i < mr; ++i) {
      T* crow = o.c + i * o.sm;
      for (int j = 0; j < NV; ++j) {
        V<T> z = vload(tile + i * NR + j * L);
        if (!o.overwrite) z += vload<T>(crow + j * L);
        if (epi) {
          if (o.bias) z += o.bias_dim == 1 ? vload<T>(o.bias + j * L) : vbcast<T>(o.bias[i * o.s_bias]);
          if (o.p) vstore(o.p + i * o.psm + j * L, z);
          z = act_vec<T>(o.act, z);
        }
        vstore(crow + j * L, z);
      }
    }
    return;
  }
  for (int64_t i = 0; i < mr; ++i) {
    for (int64_t j = 0; j < nr; ++j) {
      T z = tile[i * NR + j];
      T* cp = o.c + i * o.sm + j * o.sn;
      if (!o.overwrite) z += *cp;
      if (epi) {
        if (o.bias) z += o.bias[(o.bias_dim == 1 ? j : i) * o.s_bias];
        if (o.p) o.p[i * o.psm + j * o.psn] = z;
        z = act_scalar(o.act, z);
      }
      *cp = z;
    }
  }
}

// ---- one task: rows [m0, m1) x cols [n0, n1) of batch entry bidx ---------------------------
template <typename T>
void gemm_task(const GemmArgs<T>& g, int64_t bidx, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
               bool direct) {
  using Bk = Blocking<T>;
  constexpr int MR = Bk::MR, NV = Bk::NV, NR = NV * lanes<T>();
  const T* A = g.a + bidx * g.sa_b;
  const T* B = g.b + bidx * g.sb_b;
  T* C = g.c + bidx * g.sc_b;
  T* P = g.preact ? g.preact + bidx * g.sp_b : nullptr;

  if (g.K == 0) {  // empty reduction: z = (C if accumulate) + bias
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = n0; n < n1; ++n) {
        T* cp = C + m * g.sc_m + n * g.sc_n;
        T z = g.accumulate ? *cp : T(0);
        if (g.bias) z += g.bias[(g.bias_dim == 1 ? n : m) * g.s_bias];
        if (P) P[m * g.sp_m + n * g.sp_n] = z;
        *cp = act_scalar(g.act, z);
      }
    return;
  }

  const CacheBlocks<T>& cb = CacheBlocks<T>::get();
  const int64_t nc_max = std::min<int64_t>(cb.NC, ceil_div(n1 - n0, NR) * NR);
  T* bufB = static_cast<T*>(tls_buffer(1, sizeof(T) * cb.KC * nc_max));
  T* bufA = static_cast<T*>(tls_buffer(0, sizeof(T) * cb.KC * cb.MC));
  alignas(64) T tile[MR * NR];
  // Small problems skip packing (see gemm_forward_impl): A is always read in place; B in place
  // when its rows are contiguous, except a partial last panel, which is packed alone (reading
  // NR values of a shorter row could run past the end of the buffer).
  // A is also read in place when this task covers few columns: a packed A element would then
  // serve only (n1 - n0) / NR micro-panels, too few to repay the copy (every task packs its
  // own A). Measured: Linear forward 1000 x 128 x 784 went from 135-166 to 207 GFLOP/s.
  // B in place stays limited to small problems: B rows a multiple of 4 KiB apart share L1 sets.
  const int mode = gemm_direct_mode();
  const bool direct_a = mode >= 0 ? mode == 1 : (direct || n1 - n0 <= 256);
  const bool direct_b = direct && g.sb_n == 1;

  for (int64_t jc = n0; jc < n1; jc += cb.NC) {
    const int64_t nc = std::min<int64_t>(cb.NC, n1 - jc);
    for (int64_t pc = 0; pc < g.K; pc += cb.KC) {
      const int64_t kc = std::min<int64_t>(cb.KC, g.K - pc);
      const T* Bblk = B + pc * g.sb_k + jc * g.sb_n;
      if (!direct_b) pack_b<T, NR>(kc, nc, Bblk, g.sb_k, g.sb_n, bufB);
      TileOut<T> o;
      o.overwrite = pc == 0 && !g.accumulate;
      o.last = pc + kc == g.K;
      o.act = g.act;
      o.s_bias = g.s_bias;
      o.bias_dim = g.bias_dim;
      o.sm = g.sc_m; o.sn = g.sc_n; o.psm = g.sp_m; o.psn = g.sp_n;
      for (int64_t ic = m0; ic < m1; ic += cb.MC) {
        const int64_t mc = std::min<int64_t>(cb.MC, m1 - ic);
        const T* Ablk = A + ic * g.sa_m + pc * g.sa_k;
        if (!direct_a) pack_a<T, MR>(mc, kc, Ablk, g.sa_m, g.sa_k, bufA);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t nr = std::min<int64_t>(NR, nc - jr);
          const T* pb = bufB + jr * kc;
          int64_t b_sk = NR;
          if (direct_b && nr == NR) {
            pb = Bblk + jr;
            b_sk = g.sb_k;
          } else if (direct_b) {
            pack_b<T, NR>(kc, nr, Bblk + jr, g.sb_k, g.sb_n, bufB);
            pb = bufB;
          }
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t mr = std::min<int64_t>(MR, mc - ir);
            const int64_t m = ic + ir, n = jc + jr;
            o.c = C + m * g.sc_m + n * g.sc_n;
            if (direct_a)
              micro_kernel<T, MR, NV, true>(kc, Ablk + ir * g.sa_m, g.sa_m, g.sa_k, mr, pb, b_sk,
                                            tile, o.c, g.sc_m);
            else
              micro_kernel<T, MR, NV, false>(kc, bufA + ir * kc, 0, 0, mr, pb, b_sk, tile, o.c,
                                             g.sc_m);
            o.p = P ? P + m * g.sp_m + n * g.sp_n : nullptr;
            o.bias = g.bias ? g.bias + (g.bias_dim == 1 ? n : m) * g.s_bias : nullptr;
            store_tile<T, NV>(tile, mr, nr, o);
          }
        }
      }
    }
  }
}

// Splits one problem of mb x nb micro-tiles into `parts` rectangles (tm x tn) with the
// smallest largest piece.
void choose_split(int64_t mb, int64_t nb, int64_t parts, int64_t* tm, int64_t* tn) {
  *tm = 1; *tn = 1;
  int64_t best = -1;
  for (int64_t a = 1; a <= parts; ++a) {
    if (parts % a) continue;
    const int64_t b = parts / a;
    if (a > mb || b > nb) continue;
    const int64_t piece = ceil_div(mb, a) * ceil_div(nb, b);
    if (best < 0 || piece < best) { best = piece; *tm = a; *tn = b; }
  }
}

// The same problem seen as C^T = B^T A^T: every operand's strides swapped.
template <typename T>
GemmArgs<T> transposed(const GemmArgs<T>& g) {
  GemmArgs<T> t = g;
  t.M = g.N; t.N = g.M;
  t.a = g.b; t.sa_b = g.sb_b; t.sa_m = g.sb_n; t.sa_k = g.sb_k;
  t.b = g.a; t.sb_b = g.sa_b; t.sb_k = g.sa_k; t.sb_n = g.sa_m;
  t.sc_m = g.sc_n; t.sc_n = g.sc_m;
  t.sp_m = g.sp_n; t.sp_n = g.sp_m;
  t.bias_dim = 1 - g.bias_dim;
  return t;
}

template <typename T>
void gemm_forward_impl(const GemmArgs<T>& g, bool may_transpose = true) {
  using Bk = Blocking<T>;
  constexpr int MR = Bk::MR, NR = Bk::NV * lanes<T>();
  if (g.batch <= 0 || g.M <= 0 || g.N <= 0) return;
  // Narrow outputs (N well below NR, e.g. a Linear with 10 outputs) waste most of every
  // MR x NR tile on padding; computing C^T = B^T A^T pads the other way. Taken only when it
  // cuts the padded work by a third, since the transposed C tile is stored element-wise.
  if (may_transpose && g.K > 0) {
    const double work = double(ceil_div(g.M, MR) * MR) * double(ceil_div(g.N, NR) * NR);
    const double work_t = double(ceil_div(g.N, MR) * MR) * double(ceil_div(g.M, NR) * NR);
    if (work_t < 0.67 * work) {
      gemm_forward_impl(transposed(g), false);
      return;
    }
  }
  const int64_t threads = num_threads();
  const double flops = 2.0 * g.batch * g.M * g.N * std::max<int64_t>(g.K, 1);
  const int64_t mb = ceil_div(g.M, MR), nb = ceil_div(g.N, NR);
  // Below ~1 MFLOP the pool's wake-up costs more than a second core gains.
  int64_t parts = 1;
  if (threads > 1 && flops >= 1.0e6) {
    while ((g.batch * parts) % threads != 0 && g.batch * parts < 4 * threads) ++parts;
    parts = std::min(parts, mb * nb);
  }
  int64_t tm, tn;
  choose_split(mb, nb, parts, &tm, &tn);
  // Small GEMMs (M*N*K up to 2^22, e.g. a Linear layer on a minibatch of 32-64) are dominated
  // by packing: every task would pack all of A or B for a few microkernel calls. They read the
  // operands in place instead (gemm_direct_mode() forces either way, for tests and measurements).
  const int mode = gemm_direct_mode();
  const bool direct = mode >= 0 ? mode == 1 : double(g.M) * g.N * g.K <= 4194304.0;
  const int64_t per = tm * tn;
  auto task = [&](int64_t t, int) {
    const int64_t bidx = t / per, r = t % per, im = r / tn, in = r % tn;
    const int64_t m0 = std::min(g.M, (im * mb / tm) * MR), m1 = std::min(g.M, ((im + 1) * mb / tm) * MR);
    const int64_t n0 = std::min(g.N, (in * nb / tn) * NR), n1 = std::min(g.N, ((in + 1) * nb / tn) * NR);
    if (m0 < m1 && n0 < n1) gemm_task(g, bidx, m0, m1, n0, n1, direct);
  };
  if (parts == 1 && (threads == 1 || flops < 1.0e6)) {
    for (int64_t t = 0; t < g.batch; ++t) task(t, 0);
  } else {
    parallel_for(g.batch * per, task);
  }
}

// ---- epilogue backward: dz = dy * act'(saved), dbias = column sums of dz --------------------
template <typename T>
void gemm_backward_impl(const EpilogueBwdArgs<T>& e) {
  if (e.M < 0 || e.N <= 0) return;
  if (e.M == 0) {  // empty batch (its buffers may be null): the bias gradient is zero
    if (e.dbias)
      for (int64_t n = 0; n < e.N; ++n) e.dbias[n * e.s_dbias] = T(0);
    return;
  }
  if (!e.dz && (e.act != Act::None || !e.dbias)) return;  // nothing asked (checked in Python)
  constexpr int64_t CHUNK = 256;  // columns per task
  const int64_t tasks = ceil_div(e.N, CHUNK);
  auto task = [&](int64_t t, int) {
    const int64_t n0 = t * CHUNK, n1 = std::min(e.N, n0 + CHUNK), w = n1 - n0;
    double sums[CHUNK];
    for (int64_t j = 0; j < w; ++j) sums[j] = 0.0;
    const bool unit = e.sdy_n == 1 && e.ss_n == 1 && e.sdz_n == 1;
    if (!e.dz) {  // no activation: dz is dy itself, only the bias gradient is wanted
      for (int64_t m = 0; m < e.M; ++m) {
        const T* dy = e.dy + m * e.sdy_m + n0 * e.sdy_n;
        for (int64_t j = 0; j < w; ++j) sums[j] += dy[j * e.sdy_n];
      }
      for (int64_t j = 0; j < w; ++j) e.dbias[(n0 + j) * e.s_dbias] = static_cast<T>(sums[j]);
      return;
    }
    for (int64_t m = 0; m < e.M; ++m) {
      const T* dy = e.dy + m * e.sdy_m + n0 * e.sdy_n;
      const T* sv = e.saved + m * e.ss_m + n0 * e.ss_n;
      T* dz = e.dz + m * e.sdz_m + n0 * e.sdz_n;
      if (unit && e.act == Act::None) {
        for (int64_t j = 0; j < w; ++j) dz[j] = dy[j];
      } else if (unit && e.act == Act::Relu) {
        for (int64_t j = 0; j < w; ++j) dz[j] = sv[j] > T(0) ? dy[j] : T(0);
      } else if (unit && e.act == Act::Tanh) {
        for (int64_t j = 0; j < w; ++j) dz[j] = dy[j] * (T(1) - sv[j] * sv[j]);
      } else if (unit && e.act == Act::Sigmoid) {
        for (int64_t j = 0; j < w; ++j) dz[j] = dy[j] * sv[j] * (T(1) - sv[j]);
      } else {
        for (int64_t j = 0; j < w; ++j)
          dz[j * e.sdz_n] = dy[j * e.sdy_n] * act_grad(e.act, sv[j * e.ss_n]);
      }
      if (e.dbias)
        for (int64_t j = 0; j < w; ++j) sums[j] += dz[j * e.sdz_n];
    }
    if (e.dbias)
      for (int64_t j = 0; j < w; ++j) e.dbias[(n0 + j) * e.s_dbias] = static_cast<T>(sums[j]);
  };
  if (tasks == 1 || 1.0 * e.M * e.N < 65536.0) {
    for (int64_t t = 0; t < tasks; ++t) task(t, 0);
  } else {
    parallel_for(tasks, task);
  }
}

}  // namespace

void gemm_forward(const GemmArgs<float>& g) { gemm_forward_impl(g); }
void gemm_forward(const GemmArgs<double>& g) { gemm_forward_impl(g); }
void gemm_backward(const EpilogueBwdArgs<float>& e) { gemm_backward_impl(e); }
void gemm_backward(const EpilogueBwdArgs<double>& e) { gemm_backward_impl(e); }

}  // namespace PK_NS
}  // namespace pk
