// rnn.cpp — one LSTM or GRU layer over a whole sequence, forward and backward through time.
//
// Forward: per step, one parallel pass over chunks of L hidden units (L = SIMD lanes). A chunk's
//   task computes x_t W_ih^T + h_prev W_hh^T for the G gate slabs of its units on a register tile
//   of rows x G vectors (both weights packed once per call so that each chunk's G*L columns are
//   contiguous, W_ih's rows then W_hh's), and applies the biases, the gate nonlinearities and the
//   state update to the accumulators in registers: the gate pre-activations never go to memory,
//   and there is one barrier per time step. (A first version ran the input projection of all
//   steps as one big GEMM, as cuDNN and torch do: writing and re-reading those T*B*G*H values cost
//   ~20% at T100 B32 I256 H256.) Chunks are claimed so that a thread keeps the same weight
//   panels from step to step (StickyChunks).
//   A single step (T = 1: the LSTMCell/GRUCell ops) packs nothing: see cell_forward.
// Backward, walking time in the opposite order:
//   per step one parallel pass over chunks of 4L units: first the recurrent GEMM of the step
//   processed before (dh_prev = dG W_hh, rows active then), then the
//   elementwise gate gradients of this step from the saved gates (dG, written to a [T, B, G*H]
//   buffer), whose column sums (the bias gradients) the chunk adds up as it goes. After the loop,
//   three GEMMs over all steps: dx = dG W_ih, dW_ih = dG^T x, dW_hh = dGh^T h_prev.
//   One step (the cells, with whole vectors of I and H): no GEMM passes; each chunk's task
//   makes the dW rows of its gate rows right after its dG, and dx = dG W_ih reads W_ih in place
//   in the pass that makes dh0 (see one_step).
// Memory: the packed weights and dG are Scratch (the block cache of memory.cpp: their pages are
//   faulted in once, not on every call), and so is the workspace the ops layer passes in.
// Workspace (index t = time): LSTM gates [T][B][4H] (i, f, g, o after the nonlinearity) | c [T][B][H]
// | h_prev [T][B][H]; GRU gates [T][B][4H] (r, z, n, h W_hn^T + b_hn) | h_prev [T][B][H].
// PackedSequence (batch_sizes): at time t only rows b < batch_sizes[t] are active; the others'
// state is carried unchanged (both directions: rows leave the forward direction at their last
// step and join the reverse direction at it).
#include <algorithm>
#include <atomic>
#include <type_traits>
#include <utility>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"
#include "gemm_kernel.h"
#include "vmath.h"

namespace pk {
namespace PK_NS {
namespace {

enum { kLstm = 0, kGru = 1 };

// Sizes of one call.
template <typename T>
struct Plan {
  int kind;
  int64_t Tn, B, I, H, G, GH, GW, nch, nchb;
  explicit Plan(const RnnArgs<T>& a)
      : kind(a.kind), Tn(a.steps), B(a.B), I(a.I), H(a.H), G(a.kind == kLstm ? 4 : 3), GH(G * a.H),
        GW(4 * a.H), nch(ceil_div(a.H, lanes<T>())), nchb(ceil_div(a.H, 4 * lanes<T>())) {}
  int64_t time(int64_t s, bool reverse) const { return reverse ? Tn - 1 - s : s; }
  T* gates(T* ws) const { return ws; }
  T* cs(T* ws) const { return kind == kLstm ? ws + Tn * B * GW : nullptr; }
  T* hs(T* ws) const { return ws + Tn * B * GW + (kind == kLstm ? Tn * B * H : 0); }
};

template <typename T>
int64_t active_rows(const RnnArgs<T>& a, int64_t t) {
  return a.batch_sizes ? a.batch_sizes[t] : a.B;
}

// A strided run of n (<= lanes) values as a vector, and back.
template <typename T>
inline V<T> load_s(const T* p, int64_t stride, int64_t n) {
  if (stride == 1) return n == lanes<T>() ? vload(p) : vload_n(p, n);
  V<T> v{};
  for (int64_t l = 0; l < n; ++l) v[l] = p[l * stride];
  return v;
}
template <typename T>
inline void store_s(T* p, int64_t stride, V<T> v, int64_t n) {
  if (stride == 1) {
    if (n == lanes<T>()) vstore(p, v); else vstore_n(p, v, n);
    return;
  }
  for (int64_t l = 0; l < n; ++l) p[l * stride] = v[l];
}

// Runs fn(c) once for every chunk c in [0, n) per call, on all threads, each chunk claimed with an
// atomic stamp. Thread 0 walks the chunks from the front, the others from the back, so that
// from one time step to the next a thread keeps (mostly) the same chunks and their weight panels
// stay in its own L2 (plain task claiming hands them out in a different order every step). Any
// schedule is correct: a thread that runs alone simply claims every chunk.
class StickyChunks {
 public:
  explicit StickyChunks(int64_t n) : stamp_(n) {
    for (auto& s : stamp_) s.store(-1, std::memory_order_relaxed);
  }
  template <typename F>
  void run(F&& fn) {
    const int64_t round = round_++, n = static_cast<int64_t>(stamp_.size());
    parallel_for(std::min<int64_t>(num_threads(), n), [&](int64_t, int tid) {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t c = tid == 0 ? i : n - 1 - i;
        if (stamp_[c].exchange(round, std::memory_order_acq_rel) != round) fn(c);
      }
    });
  }

 private:
  std::vector<std::atomic<int64_t>> stamp_;
  int64_t round_ = 0;
};

// ---- forward -------------------------------------------------------------------------------------
// One row block of a step: x_t (rows a1, stride a1_sk along k, K1 = I) and h_prev (rows a2,
// contiguous, K2 = H) against the chunk's packed weights (K1 rows of W_ih then K2 rows of W_hh,
// each G vectors: the gates of the chunk's L units). Slots: LSTM 4 (i, f, g, o, summed over both
// parts); GRU 4: r, z over both, n's x part in slot 2 and its h part in slot 3 (torch keeps
// b_hn inside r * (h W_hn^T + b_hn)). Then epi(i, acc[i]) for rows i < mr.
template <typename T, int MR, int G, typename Epi>
inline void fused_tile(const T* __restrict a1, int64_t a1_si, int64_t a1_sk, int64_t k1, const T* __restrict a2,
                       int64_t a2_si, int64_t k2, int64_t mr, const T* __restrict b, Epi&& epi) {
  constexpr int L = lanes<T>();
  constexpr int NS = 4;               // accumulator slots
  constexpr int H_N = G == 4 ? 2 : 3;  // the slot of gate 2 in the h part
  V<T> acc[MR][NS];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int g = 0; g < NS; ++g) acc[i][g] = V<T>{};
  const T* ar[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) ar[i] = a1 + (i < mr ? i : mr - 1) * a1_si;
  for (int64_t k = 0; k < k1; ++k) {
    V<T> bv[G];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) bv[g] = vload(b + k * G * L + g * L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V<T> av = vbcast(ar[i][k * a1_sk]);
#pragma GCC unroll 4
      for (int g = 0; g < G; ++g) acc[i][g] += av * bv[g];
    }
  }
  b += k1 * G * L;
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) ar[i] = a2 + (i < mr ? i : mr - 1) * a2_si;
  for (int64_t k = 0; k < k2; ++k) {
    V<T> bv[G];
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) bv[g] = vload(b + k * G * L + g * L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V<T> av = vbcast(ar[i][k]);
      acc[i][0] += av * bv[0];
      acc[i][1] += av * bv[1];
      acc[i][H_N] += av * bv[2];
      if (G == 4) acc[i][3] += av * bv[G == 4 ? 3 : 2];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if (i >= mr) break;
    epi(i, acc[i]);
  }
}

template <typename T, int G, typename Epi>
void fused_rows(int64_t m, const T* a1, int64_t a1_si, int64_t a1_sk, int64_t k1, const T* a2, int64_t a2_si,
                int64_t k2, const T* b, Epi&& epi) {
  auto tile = [&](auto mr_tag, int64_t i, int64_t mr) {
    constexpr int MR = decltype(mr_tag)::value;
    fused_tile<T, MR, G>(a1 + i * a1_si, a1_si, a1_sk, k1, a2 + i * a2_si, a2_si, k2, mr, b,
                         [&, i](int r, V<T>* acc) { epi(i + r, acc); });
  };
  using M6 = std::integral_constant<int, kTileMR>;
  using M2 = std::integral_constant<int, 2>;
  int64_t i = 0;
#if defined(PK_ISA_AVX512)
  using M4 = std::integral_constant<int, 4>;
  // rows in tiles of 6, the last 7-11 rows as two tiles of up to 4 and 6 (a 1- or 2-row tile
  // is load-bound: its G weight vectors per k feed only G-2G FMAs)
  int64_t full = m / kTileMR;
  if (full > 0 && m % kTileMR > 0 && m % kTileMR <= 2) --full;
  for (; i < full * kTileMR; i += kTileMR) tile(M6{}, i, kTileMR);
  while (i < m) {
    const int64_t r = m - i;
    if (r > 6) {  // 7 or 8 rows: 4 + the rest
      tile(M4{}, i, 4);
      i += 4;
    } else {
      if (r > 4) tile(M6{}, i, r); else if (r > 2) tile(M4{}, i, r); else tile(M2{}, i, r);
      i = m;
    }
  }
#else
  for (; i + kTileMR <= m; i += kTileMR) tile(M6{}, i, kTileMR);
  if (i < m) tile(M2{}, i, m - i);
#endif
}

// The weights packed for the steps: chunk c holds, for every k, the G gate rows of its L units
// side by side, first W_ih's I columns, then W_hh's H:
// wp[c][k][g*L + l] = W_ih[g*H + c*L + l][k] (k < I), W_hh[...][k - I] (k >= I); 0 past H.
// The L rows of a gate advance together, one packed vector per k (as gemm's pack_b): a row at
// a time instead writes every cache line of the panel once per unit (1.35x slower with two
// threads at I = H = 256, 1.5x with one).
template <typename T>
void pack_weights_forward(const RnnArgs<T>& a, const Plan<T>& p, T* wp) {
  constexpr int L = lanes<T>();
  const int64_t K = p.I + p.H, GL = p.G * L;
  parallel_for(p.nch, [&](int64_t c, int) {
    const int64_t nl = std::min<int64_t>(L, p.H - c * L);
    for (int64_t g = 0; g < p.G; ++g)
      for (int part = 0; part < 2; ++part) {
        const int64_t sr = part ? a.swh[0] : a.swi[0], sk = part ? a.swh[1] : a.swi[1];
        const int64_t kn = part ? p.H : p.I;
        const T* rows[L];
        for (int l = 0; l < L; ++l)  // past H: a row of the chunk repeated, zeroed below
          rows[l] = (part ? a.w_hh : a.w_ih) + (g * p.H + c * L + std::min<int64_t>(l, nl - 1)) * sr;
        T* d = wp + (c * K + (part ? p.I : 0)) * GL + g * L;
        for (int64_t k = 0; k < kn; ++k) {
#pragma GCC unroll 16
          for (int l = 0; l < L; ++l) d[k * GL + l] = rows[l][k * sk];
        }
        if (nl < L)
          for (int64_t k = 0; k < kn; ++k) std::fill(d + k * GL + nl, d + k * GL + L, T(0));
      }
  });
}

// ---- one step (the cell ops): weights streamed in place, batch in the vector lanes --------------
// A single step must not pay a packing pass over the weights (which costs as much as the step's
// GEMMs). Here the weights are the broadcast operand, read in place row by row, and the batch is
// the vector dimension: acc[u][slot][v] = sum_k W[g*H + j_u][k] * z[k][v*L : v*L + L] over
// z = [x ; h0] (packed transposed once, (I + H) x B values). Slots: LSTM i, f, g, o over both
// parts; GRU r, z over both, n's x part and h part apart (torch keeps b_hn inside r * (...)).
// One part's k loop: SKIP is the slot the part does not feed (-1: none), a template argument so
// that the loop has no branch in it (a runtime test there ran the cells' forward 4-8% slower).
template <typename T, int GS, int U, int NV, int SKIP>
inline void cell_part(int64_t K, const T* const (&rows)[U][GS], int64_t wc, const T* z, int64_t zld,
                      V<T> (&acc)[U][GS][NV]) {
  constexpr int L = lanes<T>();
  for (int64_t k = 0; k < K; ++k) {
    V<T> zv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) zv[v] = vload(z + k * zld + v * L);
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
      for (int g = 0; g < GS; ++g) {
        if (g == SKIP) continue;
        const V<T> wv = vbcast(rows[u][g][k * wc]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[u][g][v] += wv * zv[v];
      }
  }
}

template <typename T, int GS, int U, int NV>
inline void cell_tile(const RnnArgs<T>& a, const Plan<T>& p, int64_t j0, int64_t nu, const T* zt,
                      int64_t zld, V<T> (&acc)[U][GS][NV]) {
  const bool lstm = p.kind == kLstm;
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
    for (int g = 0; g < GS; ++g)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[u][g][v] = V<T>{};
  // part 0: x with W_ih (slots 0..G-1); part 1: h with W_hh (slots 0, 1, then 2 for LSTM g/o...)
  for (int part = 0; part < 2; ++part) {
    const T* w = part ? a.w_hh : a.w_ih;
    const int64_t wr = part ? a.swh[0] : a.swi[0], wc = part ? a.swh[1] : a.swi[1];
    const int64_t K = part ? p.H : p.I;
    const T* z = zt + (part ? p.I : 0) * zld;
    if (part == 1 && !a.h0) continue;  // h0 = 0 contributes nothing
    const T* rows[U][GS];
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const int64_t j = j0 + (u < nu ? u : nu - 1);
#pragma GCC unroll 4
      for (int g = 0; g < GS; ++g) {
        // GRU slot 2 is n's x part (W_ih row 2H + j), slot 3 its h part (W_hh row 2H + j)
        const int64_t gate = lstm ? g : (g == 3 ? 2 : g);
        rows[u][g] = w + (gate * p.H + j) * wr;
      }
    }
    // GRU: the x part feeds no slot 3, the h part no slot 2
    if (lstm)
      cell_part<T, GS, U, NV, -1>(K, rows, wc, z, zld, acc);
    else if (part == 0)
      cell_part<T, GS, U, NV, 3>(K, rows, wc, z, zld, acc);
    else
      cell_part<T, GS, U, NV, 2>(K, rows, wc, z, zld, acc);
  }
}

template <typename T>
void cell_forward(const RnnArgs<T>& a, const Plan<T>& p) {
  constexpr int L = lanes<T>();
  // hidden units per task: 16 floats, one cache line of each output row (y, hn, cn, the saved
  // gates). With 8, neighbouring tasks on the two threads shared every line they wrote, and a
  // LSTMCell / GRUCell training step ran ~1.8x slower in some runs than in others.
  constexpr int UNITS = 64 / sizeof(float);
  const int64_t B = p.B, H = p.H, I = p.I, GW = p.GW;
  const int64_t bp = ceil_div(B, L) * L, nvec = bp / L;
  const int64_t bs = active_rows(a, 0);
  const bool lstm = p.kind == kLstm;
  std::vector<T> zt((I + H) * bp, T(0));  // [x ; h0] transposed, zero past B
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < I; ++i) zt[i * bp + b] = a.x[b * a.sx[1] + i * a.sx[2]];
    if (a.h0)
      for (int64_t j = 0; j < H; ++j) zt[(I + j) * bp + b] = a.h0[b * a.sh0[0] + j * a.sh0[1]];
  }
  T* gates = a.ws ? p.gates(a.ws) : nullptr;
  T* cs = a.ws ? p.cs(a.ws) : nullptr;
  T* hs = a.ws ? p.hs(a.ws) : nullptr;
  if (hs)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) hs[b * H + j] = zt[(I + j) * bp + b];
  auto bias = [&](const T* v, int64_t s, int64_t n) { return v ? v[n * s] : T(0); };
  parallel_for(ceil_div(H, UNITS), [&](int64_t task, int) {
    const int64_t u_end = std::min<int64_t>(H, (task + 1) * UNITS);
    auto finish = [&](int64_t j, int64_t b0, int64_t nl, V<T>* gate_acc) {
      // gate_acc: the slots of unit j for batch lanes b0 .. b0 + nl
      auto bv = [&](int64_t gate, bool hh) {  // the biases of a gate row, as one vector
        return vbcast<T>(hh ? bias(a.b_hh, a.sbh, gate * H + j) : bias(a.b_ih, a.sbi, gate * H + j));
      };
      const int64_t ws_s = GW;  // lane stride in the workspace's gate rows
      V<T> h, cn{};
      auto h0_at = [&](int64_t b) { return a.h0 ? a.h0[b * a.sh0[0] + j * a.sh0[1]] : T(0); };
      if (lstm) {
        const V<T> i = vsigmoid<T>(gate_acc[0] + bv(0, false) + bv(0, true));
        const V<T> f = vsigmoid<T>(gate_acc[1] + bv(1, false) + bv(1, true));
        const V<T> g = vtanh<T>(gate_acc[2] + bv(2, false) + bv(2, true));
        const V<T> o = vsigmoid<T>(gate_acc[3] + bv(3, false) + bv(3, true));
        const V<T> cp = a.c0 ? load_s(a.c0 + b0 * a.sc0[0] + j * a.sc0[1], a.sc0[0], nl) : V<T>{};
        cn = f * cp + i * g;
        h = o * vtanh<T>(cn);
        if (gates) {
          T* gr = gates + b0 * GW + j;
          store_s(gr, ws_s, i, nl);
          store_s(gr + H, ws_s, f, nl);
          store_s(gr + 2 * H, ws_s, g, nl);
          store_s(gr + 3 * H, ws_s, o, nl);
          store_s(cs + b0 * H + j, H, cn, nl);
        }
      } else {
        const V<T> r = vsigmoid<T>(gate_acc[0] + bv(0, false) + bv(0, true));
        const V<T> z = vsigmoid<T>(gate_acc[1] + bv(1, false) + bv(1, true));
        const V<T> hl = gate_acc[3] + bv(2, true);
        const V<T> n = vtanh<T>(gate_acc[2] + bv(2, false) + r * hl);
        V<T> hprev{};
        for (int64_t l = 0; l < nl; ++l) hprev[l] = h0_at(b0 + l);
        h = (T(1) - z) * n + z * hprev;
        if (gates) {
          T* gr = gates + b0 * GW + j;
          store_s(gr, ws_s, r, nl);
          store_s(gr + H, ws_s, z, nl);
          store_s(gr + 2 * H, ws_s, n, nl);
          store_s(gr + 3 * H, ws_s, hl, nl);
        }
      }
      // rows past batch_sizes[0]: state carried (hn = h0, cn = c0), y = 0
      for (int64_t l = 0; l < nl; ++l) {
        const int64_t b = b0 + l;
        const bool on = b < bs;
        a.y[b * a.sy[1] + j * a.sy[2]] = on ? h[l] : T(0);
        if (a.hn) a.hn[b * a.shn[0] + j * a.shn[1]] = on ? h[l] : h0_at(b);
        if (lstm && a.cn)
          a.cn[b * a.scn[0] + j * a.scn[1]] = on ? cn[l] : (a.c0 ? a.c0[b * a.sc0[0] + j * a.sc0[1]] : T(0));
      }
    };
    constexpr int GS = 4;
    for (int64_t j0 = task * UNITS; j0 < u_end; j0 += 2) {
      const int64_t nu = std::min<int64_t>(2, u_end - j0);
      int64_t v0 = 0;
      for (; v0 + 4 <= nvec; v0 += 4)
        for (int64_t u = 0; u < nu; ++u) {  // 4 batch vectors: one unit per tile
          V<T> acc[1][GS][4];
          cell_tile<T, GS, 1, 4>(a, p, j0 + u, 1, zt.data() + v0 * L, bp, acc);
          for (int v = 0; v < 4; ++v) {
            V<T> ga[GS] = {acc[0][0][v], acc[0][1][v], acc[0][2][v], acc[0][3][v]};
            finish(j0 + u, (v0 + v) * L, std::min<int64_t>(L, B - (v0 + v) * L), ga);
          }
        }
      for (; v0 < nvec; v0 += 2) {  // 1 or 2 batch vectors: two units per tile
        const int nv = nvec - v0 >= 2 ? 2 : 1;
        V<T> acc2[2][GS][2];
        if (nv == 2) {
          cell_tile<T, GS, 2, 2>(a, p, j0, nu, zt.data() + v0 * L, bp, acc2);
        } else {
          V<T> acc1[2][GS][1];
          cell_tile<T, GS, 2, 1>(a, p, j0, nu, zt.data() + v0 * L, bp, acc1);
          for (int u = 0; u < 2; ++u)
            for (int g = 0; g < GS; ++g) acc2[u][g][0] = acc1[u][g][0];
        }
        for (int64_t u = 0; u < nu; ++u)
          for (int v = 0; v < nv; ++v) {
            V<T> ga[GS] = {acc2[u][0][v], acc2[u][1][v], acc2[u][2][v], acc2[u][3][v]};
            finish(j0 + u, (v0 + v) * L, std::min<int64_t>(L, B - (v0 + v) * L), ga);
          }
      }
    }
  });
}

template <typename T>
void forward_impl(const RnnArgs<T>& a) {
  constexpr int L = lanes<T>();
  const Plan<T> p(a);
  if (p.Tn == 1) return cell_forward(a, p);
  const int64_t B = p.B, H = p.H, GW = p.GW;
  T* gates = a.ws ? p.gates(a.ws) : nullptr;  // saved for the backward (nothing without ws)
  T* cs = a.ws ? p.cs(a.ws) : nullptr;
  T* hs = a.ws ? p.hs(a.ws) : nullptr;
  // Without a workspace or padded steps, a y of [B, H] rows whose steps do not overlap holds the
  // state: step s reads h from y at the time before and writes its h once, to y (measured
  // ~0.6-1% faster at T100 B32 H256 than a double-buffered state stored twice).
  const bool h_in_y = !hs && !a.batch_sizes && a.sy[1] == H && a.sy[2] == 1 && a.sy[0] >= B * H;
  std::vector<T> hbuf(a.ws ? 0 : h_in_y ? B * H : 2 * B * H);  // else a double-buffered h state
  Scratch<T> wp(p.nch * (p.I + H) * p.G * L);  // the packed weights
  std::vector<T> state(2 * B * H);             // c state, final h
  T* c_state = state.data();
  T* h_final = state.data() + B * H;
  pack_weights_forward(a, p, wp.data());

  auto h_slot = [&](int64_t s) -> T* {  // h before step s (the A operand of step s)
    if (h_in_y && s > 0) return a.y + p.time(s - 1, a.reverse) * a.sy[0];
    if (s == p.Tn) return h_final;
    return hs ? hs + p.time(s, a.reverse) * B * H : hbuf.data() + (s & 1) * B * H;
  };
  T* h_first = h_slot(0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) {
      h_first[b * H + j] = a.h0 ? a.h0[b * a.sh0[0] + j * a.sh0[1]] : T(0);
      c_state[b * H + j] = p.kind == kLstm && a.c0 ? a.c0[b * a.sc0[0] + j * a.sc0[1]] : T(0);
    }
  // the biases per chunk and accumulator slot (GRU: b_ir + b_hr, b_iz + b_hz, b_in, b_hn), once
  std::vector<T> biases(p.nch * 4 * L, T(0));
  auto bias = [&](int64_t n, bool ih, bool hh) {  // b_ih[n] and/or b_hh[n]
    return (ih && a.b_ih ? a.b_ih[n * a.sbi] : T(0)) + (hh && a.b_hh ? a.b_hh[n * a.sbh] : T(0));
  };
  for (int64_t c = 0; c < p.nch; ++c)
    for (int g = 0; g < 4; ++g)
      for (int l = 0; l < L; ++l) {
        const int64_t j = c * L + l;
        if (j < H)
          biases[(c * 4 + g) * L + l] = p.kind == kLstm ? bias(g * H + j, true, true)
                                        : g < 2 ? bias(g * H + j, true, true)
                                        : bias(2 * H + j, g == 2, g == 3);
      }

  StickyChunks chunks(p.nch);
  for (int64_t s = 0; s < p.Tn; ++s) {
    const int64_t t = p.time(s, a.reverse), bs = active_rows(a, t);
    const T* hp = h_slot(s);
    const T* xt = a.x + t * a.sx[0];
    T* hn = h_slot(s + 1);
    T* grow = gates ? gates + t * B * GW : nullptr;
    T* crow = cs ? cs + t * B * H : nullptr;
    T* yt = a.y + t * a.sy[0];
    chunks.run([&](int64_t c) {
      const int64_t j0 = c * L, nl = std::min<int64_t>(L, H - j0);
      V<T> bv[4];
      for (int g = 0; g < 4; ++g) bv[g] = vload(biases.data() + (c * 4 + g) * L);
      // the cell on one row's L units, given acc = the gates' x W_ih^T + h W_hh^T
      auto lstm_cell = [&](int64_t b, const V<T>* acc) {
        const V<T> i = vsigmoid<T>(acc[0] + bv[0]);
        const V<T> f = vsigmoid<T>(acc[1] + bv[1]);
        const V<T> g = vtanh<T>(acc[2] + bv[2]);
        const V<T> o = vsigmoid<T>(acc[3] + bv[3]);
        const V<T> cn = f * vload_n(c_state + b * H + j0, nl) + i * g;
        const V<T> h = o * vtanh<T>(cn);
        if (grow) {
          T* gr = grow + b * GW + j0;
          vstore_n(gr, i, nl);
          vstore_n(gr + H, f, nl);
          vstore_n(gr + 2 * H, g, nl);
          vstore_n(gr + 3 * H, o, nl);
          vstore_n(crow + b * H + j0, cn, nl);
        }
        vstore_n(c_state + b * H + j0, cn, nl);
        vstore_n(hn + b * H + j0, h, nl);
        if (!h_in_y) store_s(yt + b * a.sy[1] + j0 * a.sy[2], a.sy[2], h, nl);
      };
      auto gru_cell = [&](int64_t b, const V<T>* acc) {
        const V<T> r = vsigmoid<T>(acc[0] + bv[0]);
        const V<T> z = vsigmoid<T>(acc[1] + bv[1]);
        const V<T> hl = acc[3] + bv[3];
        const V<T> n = vtanh<T>(acc[2] + bv[2] + r * hl);
        const V<T> h = (T(1) - z) * n + z * vload_n(hp + b * H + j0, nl);
        if (grow) {
          T* gr = grow + b * GW + j0;
          vstore_n(gr, r, nl);
          vstore_n(gr + H, z, nl);
          vstore_n(gr + 2 * H, n, nl);
          vstore_n(gr + 3 * H, hl, nl);
        }
        vstore_n(hn + b * H + j0, h, nl);
        if (!h_in_y) store_s(yt + b * a.sy[1] + j0 * a.sy[2], a.sy[2], h, nl);
      };
      // both GEMMs of the step on the register tile (x_t W_ih^T, then h W_hh^T), the cell on
      // its accumulators: the gate pre-activations never leave the registers
      const T* wc = wp.data() + c * (p.I + H) * p.G * L;
      if (p.kind == kLstm)
        fused_rows<T, 4>(bs, xt, a.sx[1], a.sx[2], p.I, hp, H, H, wc, lstm_cell);
      else
        fused_rows<T, 3>(bs, xt, a.sx[1], a.sx[2], p.I, hp, H, H, wc, gru_cell);
      for (int64_t b = bs; b < B; ++b) {  // inactive rows: state carried, y = 0
        std::memcpy(hn + b * H + j0, hp + b * H + j0, nl * sizeof(T));
        store_s(yt + b * a.sy[1] + j0 * a.sy[2], a.sy[2], V<T>{}, nl);
      }
    });
  }
  const T* h_last = h_slot(p.Tn);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) {
      if (a.hn) a.hn[b * a.shn[0] + j * a.shn[1]] = h_last[b * H + j];
      if (a.cn && p.kind == kLstm) a.cn[b * a.scn[0] + j * a.scn[1]] = c_state[b * H + j];
    }
}

// ---- backward ------------------------------------------------------------------------------------
// W_hh packed for dh_prev = dG W_hh: chunk c of 4L hidden units holds wq[c][gk][u] =
// W_hh[gk][c*4L + u] (0 past H). Reading W_hh in place instead (its rows are contiguous in u)
// measured ~7% slower at H = 1024: every k of the tile's loop then touches a new 4 KiB row.
template <typename T>
void pack_whh_backward(const RnnArgs<T>& a, const Plan<T>& p, T* wq) {
  constexpr int CW = 4 * lanes<T>();
  parallel_for(p.nchb, [&](int64_t c, int) {
    T* dst = wq + c * p.GH * CW;
    const int64_t nu = std::min<int64_t>(CW, p.H - c * CW);
    for (int64_t gk = 0; gk < p.GH; ++gk) {
      const T* src = a.w_hh + gk * a.swh[0] + c * CW * a.swh[1];
      T* d = dst + gk * CW;
      if (a.swh[1] == 1) {
        std::memcpy(d, src, nu * sizeof(T));
      } else {
        for (int64_t u = 0; u < nu; ++u) d[u] = src[u * a.swh[1]];
      }
      for (int64_t u = nu; u < CW; ++u) d[u] = T(0);
    }
  });
}

template <typename T>
void backward_impl(const RnnArgs<T>& a) {
  constexpr int L = lanes<T>();
  constexpr int CW = 4 * L;
  const Plan<T> p(a);
  const int64_t B = p.B, H = p.H, GH = p.GH, GW = p.GW, Tn = p.Tn;
  const bool lstm = p.kind == kLstm;
  const T* gates = p.gates(a.ws);
  const T* cs = p.cs(a.ws);
  const T* hs = p.hs(a.ws);
  // dG of every step (the step's pass writes 0 in its inactive rows); GRU: the hidden part dGh
  // apart (it differs in n)
  Scratch<T> dg((lstm ? 1 : 2) * Tn * B * GH);
  T* dGx = dg.data();
  T* dGh = lstm ? dGx : dGx + Tn * B * GH;
  // bias gradients, summed per chunk as the pass goes (a chunk is one thread's in any one step,
  // and its sum runs over the steps and rows in one fixed order): each step's rows in T, added
  // to a double total per step (as exact as the column sums in double they replace)
  // [chunk][x | h part][gate][CW]
  const bool want_db = a.db_ih || a.db_hh;
  constexpr int64_t kDbChunk = 2 * 4 * CW;
  std::vector<double> dbias(want_db ? p.nchb * kDbChunk : 0, 0.0);
  std::vector<T> carry(2 * B * H, T(0));
  // One step (the cells): no packing pass, whole chunks read W_hh in place (a ragged last chunk
  // or a transposed W_hh still goes through the packed copy).
  const bool in_place = Tn == 1 && a.swh[1] == 1;
  // One step with whole vectors of I and H and unit-stride rows (x, weights, dx, dW): the weight
  // gradients of a chunk's gate rows are made by its own task right after its dG (K = B: the
  // chunk's dG block is still in L1), and dx = dG W_ih reads W_ih in place by column chunks in
  // the pass that makes dh0, instead of three GEMM passes with their packing (~40% of a
  // LSTMCell backward at B32 I256 H256).
  const bool one_step = in_place && p.I % L == 0 && H % L == 0 && a.sx[2] == 1 && a.swi[1] == 1 &&
                        (!a.dx || a.sdx[2] == 1) && (!a.dw_ih || a.sdwi[1] == 1) &&
                        (!a.dw_hh || a.sdwh[1] == 1);
  Scratch<T> wq(in_place ? 0 : p.nchb * GH * CW);
  if (!in_place) pack_whh_backward(a, p, wq.data());
  auto w_chunk = [&](int64_t c, std::vector<T>& ragged) -> std::pair<const T*, int64_t> {
    if (!in_place) return {wq.data() + c * GH * CW, CW};
    if ((c + 1) * CW <= H) return {a.w_hh + c * CW, a.swh[0]};
    ragged.assign(GH * CW, T(0));
    const int64_t nu = H - c * CW;
    for (int64_t gk = 0; gk < GH; ++gk) std::memcpy(ragged.data() + gk * CW, a.w_hh + gk * a.swh[0] + c * CW, nu * sizeof(T));
    return {ragged.data(), CW};
  };
  // C[rows][nvec vectors] (=, or += when !zero) = A[rows][G*H] W[G*H][...], A's rows GH apart:
  // k (= the G*H gate rows) in blocks of kBlockK, so that the block of W (kBlockK x 4L) stays in
  // L1/L2 while every row tile streams past it
  constexpr int64_t kBlockK = 256;
  auto times_gate_rows = [&](int64_t rows, const T* A, const T* W, int64_t ldw, int64_t nvec, T* C, int64_t ldc,
                             bool zero) {
    for (int64_t k0 = 0; k0 < GH; k0 += kBlockK)
      gemm_rows<T>(rows, std::min<int64_t>(kBlockK, GH - k0), A + k0, GH, 1, W + k0 * ldw, ldw, nvec, C, ldc,
                   k0 == 0 && zero ? kZero : kLoad);
  };
  T* dh = carry.data();      // gradient reaching each row's h state from later steps
  T* dc = dh + B * H;        // ... and its c state (LSTM)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) {
      if (a.dhn) dh[b * H + j] = a.dhn[b * a.sdhn[0] + j * a.sdhn[1]];
      if (a.dcn && lstm) dc[b * H + j] = a.dcn[b * a.sdcn[0] + j * a.sdcn[1]];
    }
  // dh[b] (+)= dGh[t] W_hh for the rows active at t, units of chunk c
  auto recurrent = [&](int64_t c, int64_t t) {
    const int64_t u0 = c * CW, nu = std::min<int64_t>(CW, H - u0);
    const int64_t nvec = ceil_div(nu, L);
    // the tile writes whole vectors: work in a [rows][CW] scratch when H ends inside one
    T* dst = dh + u0;
    int64_t ld = H;
    std::vector<T> tmp;
    const int64_t rows = active_rows(a, t);
    const bool ragged = nu % L != 0;
    if (ragged) {
      tmp.assign(rows * CW, T(0));
      for (int64_t b = 0; b < rows; ++b) std::memcpy(tmp.data() + b * CW, dh + b * H + u0, nu * sizeof(T));
      dst = tmp.data();
      ld = CW;
    }
    std::vector<T> ragged_w;
    const auto w = w_chunk(c, ragged_w);
    times_gate_rows(rows, dGh + t * B * GH, w.first, w.second, nvec, dst, ld, lstm);
    if (ragged)
      for (int64_t b = 0; b < rows; ++b) std::memcpy(dh + b * H + u0, tmp.data() + b * CW, nu * sizeof(T));
  };
  StickyChunks chunks(p.nchb);
  for (int64_t s = Tn - 1; s >= 0; --s) {  // forward step s, in reverse order
    const int64_t t = p.time(s, a.reverse), bs = active_rows(a, t);
    const bool has_prev = s + 1 < Tn;
    const int64_t tp = has_prev ? p.time(s + 1, a.reverse) : 0;  // processed just before
    const int64_t tc = s > 0 ? p.time(s - 1, a.reverse) : -1;   // the step whose c is c_prev
    chunks.run([&](int64_t c) {
      // the saved gates and c of this step come from memory: fetch them under the GEMM
      for (int64_t b = 0; b < bs; ++b)
        for (int64_t u = c * CW; u < std::min<int64_t>(H, (c + 1) * CW); u += 16) {
          for (int64_t g = 0; g < 4; ++g) __builtin_prefetch(gates + (t * B + b) * GW + g * H + u, 0, 3);
          if (lstm) __builtin_prefetch(cs + (t * B + b) * H + u, 0, 3);
        }
      if (has_prev) recurrent(c, tp);
      const int64_t u_end = std::min<int64_t>(H, (c + 1) * CW);
      alignas(64) T step_db[kDbChunk];  // this chunk's bias sums over this step's rows
      if (want_db) std::fill(step_db, step_db + kDbChunk, T(0));
      T* dbx = want_db ? step_db : nullptr;
      T* dbh = want_db ? step_db + 4 * CW : nullptr;
      auto sum_into = [&](T* acc, int64_t g, int64_t j0, V<T> v, int64_t nl) {
        T* q = acc + g * CW + (j0 - c * CW);
        vstore_n(q, vload_n(q, nl) + v, nl);
      };
      for (int64_t b = bs; b < B; ++b)  // rows inactive at t: no gradient
        for (int64_t g = 0; g < p.G; ++g) {
          std::memset(dGx + (t * B + b) * GH + g * H + c * CW, 0, (u_end - c * CW) * sizeof(T));
          if (!lstm) std::memset(dGh + (t * B + b) * GH + g * H + c * CW, 0, (u_end - c * CW) * sizeof(T));
        }
      for (int64_t b = 0; b < bs; ++b) {
        const T* gr = gates + (t * B + b) * GW;
        T* dx = dGx + (t * B + b) * GH;
        T* dhh = dGh + (t * B + b) * GH;
        for (int64_t j0 = c * CW; j0 < u_end; j0 += L) {
          const int64_t nl = std::min<int64_t>(L, u_end - j0);
          V<T> g_h = vload_n(dh + b * H + j0, nl);
          if (a.dy) g_h += load_s(a.dy + t * a.sdy[0] + b * a.sdy[1] + j0 * a.sdy[2], a.sdy[2], nl);
          if (lstm) {
            const V<T> i = vload_n(gr + j0, nl), f = vload_n(gr + H + j0, nl);
            const V<T> g = vload_n(gr + 2 * H + j0, nl), o = vload_n(gr + 3 * H + j0, nl);
            const V<T> cc = vload_n(cs + (t * B + b) * H + j0, nl);
            V<T> cp{};  // c before step t: the previous step's, or c0 where the row starts here
            if (tc >= 0 && b < active_rows(a, tc))
              cp = vload_n(cs + (tc * B + b) * H + j0, nl);
            else if (a.c0)
              cp = load_s(a.c0 + b * a.sc0[0] + j0 * a.sc0[1], a.sc0[1], nl);
            const V<T> th = vtanh<T>(cc);
            const V<T> g_c = vload_n(dc + b * H + j0, nl) + g_h * o * (T(1) - th * th);
            const V<T> d[4] = {g_c * g * i * (T(1) - i), g_c * cp * f * (T(1) - f), g_c * i * (T(1) - g * g),
                               g_h * th * o * (T(1) - o)};
            for (int q = 0; q < 4; ++q) {
              vstore_n(dx + q * H + j0, d[q], nl);
              if (dbx) sum_into(dbx, q, j0, d[q], nl);
            }
            vstore_n(dc + b * H + j0, g_c * f, nl);
          } else {
            const V<T> r = vload_n(gr + j0, nl), z = vload_n(gr + H + j0, nl);
            const V<T> n = vload_n(gr + 2 * H + j0, nl), hl = vload_n(gr + 3 * H + j0, nl);
            const V<T> hprev = vload_n(hs + (t * B + b) * H + j0, nl);
            const V<T> g_an = g_h * (T(1) - z) * (T(1) - n * n);
            const V<T> g_r = g_an * hl * r * (T(1) - r);
            const V<T> g_z = g_h * (hprev - n) * z * (T(1) - z);
            const V<T> dn = g_an * r;
            vstore_n(dx + j0, g_r, nl);
            vstore_n(dx + H + j0, g_z, nl);
            vstore_n(dx + 2 * H + j0, g_an, nl);
            vstore_n(dhh + j0, g_r, nl);
            vstore_n(dhh + H + j0, g_z, nl);
            vstore_n(dhh + 2 * H + j0, dn, nl);
            if (dbx) {
              sum_into(dbx, 0, j0, g_r, nl);
              sum_into(dbx, 1, j0, g_z, nl);
              sum_into(dbx, 2, j0, g_an, nl);
              sum_into(dbh, 2, j0, dn, nl);
            }
            vstore_n(dh + b * H + j0, g_h * z, nl);  // h' = ... + z h: the direct path
          }
        }
      }
      if (want_db)
        for (int64_t i = 0; i < kDbChunk; ++i) dbias[c * kDbChunk + i] += step_db[i];
      if (one_step)  // dW rows of the chunk's gate rows: dG[:, rows]^T [x | h_prev], K = bs
        for (int64_t g = 0; g < p.G; ++g) {
          const int64_t n0 = g * H + c * CW, nu = u_end - c * CW;
          if (a.dw_ih)
            gemm_rows<T>(nu, bs, dGx + n0, 1, GH, a.x, a.sx[1], p.I / L, a.dw_ih + n0 * a.sdwi[0], a.sdwi[0],
                         kZero);
          if (a.dw_hh)
            gemm_rows<T>(nu, bs, dGh + n0, 1, GH, hs, H, H / L, a.dw_hh + n0 * a.sdwh[0], a.sdwh[0], kZero);
        }
    });
  }
  if (Tn > 0 && a.dh0 && !one_step) {  // the first step's dG reaches h0 through W_hh
    const int64_t t0 = p.time(0, a.reverse);
    chunks.run([&](int64_t c) { recurrent(c, t0); });
  }
  if (one_step && (a.dh0 || a.dx)) {  // dh0 = dG W_hh and dx = dG W_ih, both read in place
    const int64_t nh = a.dh0 ? p.nchb : 0, ni = a.dx ? ceil_div(p.I, CW) : 0;
    parallel_for(nh + ni, [&](int64_t task, int) {
      if (task < nh) return recurrent(task, 0);
      const int64_t i0 = (task - nh) * CW, nvec = (std::min<int64_t>(p.I, i0 + CW) - i0) / L;
      times_gate_rows(B, dGx, a.w_ih + i0, a.swi[0], nvec, a.dx + i0, a.sdx[1], true);
    });
  }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) {
      if (a.dh0) a.dh0[b * a.sdh0[0] + j * a.sdh0[1]] = dh[b * H + j];
      if (a.dc0 && lstm) a.dc0[b * a.sdc0[0] + j * a.sdc0[1]] = dc[b * H + j];
    }

  // ---- weight, bias and input gradients: GEMMs over all steps ----
  const int64_t TB = Tn * B;
  auto gemm = [](int64_t M, int64_t N, int64_t K, const T* A, int64_t sam, int64_t sak, const T* Bm,
                 int64_t sbk, int64_t sbn, T* C, int64_t scm, int64_t scn, int64_t batch = 1,
                 int64_t sab = 0, int64_t scb = 0) {
    GemmArgs<T> g{};
    g.batch = batch; g.M = M; g.N = N; g.K = K;
    g.a = A; g.sa_b = sab; g.sa_m = sam; g.sa_k = sak;
    g.b = Bm; g.sb_b = 0; g.sb_k = sbk; g.sb_n = sbn;
    g.c = C; g.sc_b = scb; g.sc_m = scm; g.sc_n = scn;
    g.bias = nullptr; g.act = Act::None; g.preact = nullptr; g.accumulate = false;
    gemm_forward(g);
  };
  if (a.dx && !one_step) {  // dx[t] = dGx[t] W_ih: one GEMM of T*B rows when dx's (t, b) is one index
    if (a.sdx[0] == B * a.sdx[1])
      gemm(TB, p.I, GH, dGx, GH, 1, a.w_ih, a.swi[0], a.swi[1], a.dx, a.sdx[1], a.sdx[2]);
    else
      gemm(B, p.I, GH, dGx, GH, 1, a.w_ih, a.swi[0], a.swi[1], a.dx, a.sdx[1], a.sdx[2], Tn, B * GH, a.sdx[0]);
  }
  if (a.dw_ih && !one_step) {  // dW_ih = dGx^T x over all (t, b)
    std::vector<T> xc;
    const T* xm = a.x;
    int64_t sm = a.sx[1], sk = a.sx[2];
    if (a.sx[0] != B * a.sx[1]) {  // (t, b) not one index: a contiguous copy of x for this GEMM
      xc.resize(TB * p.I);
      for (int64_t t = 0; t < Tn; ++t)
        for (int64_t b = 0; b < B; ++b)
          for (int64_t i = 0; i < p.I; ++i) xc[(t * B + b) * p.I + i] = a.x[t * a.sx[0] + b * a.sx[1] + i * a.sx[2]];
      xm = xc.data();
      sm = p.I;
      sk = 1;
    }
    gemm(GH, p.I, TB, dGx, 1, GH, xm, sm, sk, a.dw_ih, a.sdwi[0], a.sdwi[1]);
  }
  if (a.dw_hh && !one_step)  // dW_hh = dGh^T h_prev over all (t, b)
    gemm(GH, H, TB, dGh, 1, GH, hs, H, 1, a.dw_hh, a.sdwh[0], a.sdwh[1]);
  // the bias gradients from the chunks' sums (LSTM: both are sum dG; GRU: r and z the same in both,
  // n's x part sum dGx_n, its h part sum dGh_n)
  for (int64_t c = 0; want_db && c < p.nchb; ++c)
    for (int64_t g = 0; g < p.G; ++g)
      for (int64_t u = 0; u < CW && c * CW + u < H; ++u) {
        const double* s = dbias.data() + c * kDbChunk;
        const int64_t n = g * H + c * CW + u;
        const T vx = T(s[g * CW + u]), vh = !lstm && g == 2 ? T(s[4 * CW + g * CW + u]) : vx;
        if (a.db_ih) a.db_ih[n * a.sdbi] = vx;
        if (a.db_hh) a.db_hh[n * a.sdbh] = vh;
      }
}

}  // namespace

void rnn_forward(const RnnArgs<float>& a) { forward_impl(a); }
void rnn_forward(const RnnArgs<double>& a) { forward_impl(a); }
void rnn_backward(const RnnArgs<float>& a) { backward_impl(a); }
void rnn_backward(const RnnArgs<double>& a) { backward_impl(a); }

}  // namespace PK_NS
}  // namespace pk
