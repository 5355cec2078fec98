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
#include "gemm_kernel.h"

namespace pk {
namespace PK_NS {
namespace {

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
  // For the same reason a large A is packed whatever the width when its far stride is a multiple
  // of 2 KiB (the MR rows, or the k lines, of a tile then fall into a few L1 sets and evict each
  // other): measured dx = dG W_ih of an LSTM, 3200 x 512 x 4096 with rows 16 KiB apart, went from
  // 101 ms in place to 75 ms packed.
  const int mode = gemm_direct_mode();
  const int64_t far = std::max(std::abs(g.sa_m), std::abs(g.sa_k)) * int64_t(sizeof(T));
  const bool aliased = far % 2048 == 0 && g.K > 256;
  const bool direct_a = mode >= 0 ? mode == 1 : (direct || (n1 - n0 <= 256 && !aliased));
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
