// attention.cpp — fused softmax attention on the CPU, forward and backward, FlashAttention-2 style:
// the N x S score matrix is never stored; it is computed block by block, turned into
// probabilities with an online softmax, and used at once.
//
// Layout: every block is held TRANSPOSED, keys x queries ([BN][BM]), so that one SIMD vector
// covers BM/lanes consecutive queries of one key. The per-query softmax statistics (running max,
// row sum, log-sum-exp, Delta = rowsum(dO * O)) are then whole vectors, the column max is a
// vertical max of vectors (no horizontal reductions), and the rescale of the output by
// exp(m_old - m_new) is one vector multiply per column block, folded into the GEMM that
// accumulates it. The GEMMs are register tiles (tile_gemm below) that read the left operand in
// place (K and V rows straight from the input tensors, any strides) and the right operand as
// rows of contiguous vectors (a packed, pre-scaled Q^T block; the probability block):
//
//   forward, per (head, query block of BM):    S^T  = K_blk Q^T            [BN x BM], k = D
//                                              P^T  = exp2(S^T - m)        (online softmax)
//                                              O^T  = alpha O^T + V^T P^T  [Dv x BM], k = BN
//   backward, per (head, key block of BN), looping over the query blocks that see it:
//        S^T = K Q^T, P^T = exp2(S^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - Delta),
//        dV += P^T dO, dK += dS^T Q, dQ += dS K   (dQ partials per key-block chunk, summed
//        in a fixed order: results do not depend on the thread schedule).
// Scores are kept in base 2: Q is pre-multiplied by scale * log2(e) (and an additive mask by
// log2(e)), so each probability is one vexp2; lse is stored in natural log.
//
// Threads: forward tasks = (head, query block), claimed in order; causal blocks above the
// diagonal are skipped, and a causal head's query blocks are claimed longest first. Backward:
// one task per head when there are enough heads, else per head a split of the key blocks over
// the threads with private dQ partials. Extra memory: per thread a few blocks, plus in the
// backward contiguous copies of Q, dO (both orientations) and K of the head(s) in flight.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common.h"
#include "gemm_kernel.h"
#include "vmath.h"

namespace pk {
namespace PK_NS {
namespace {

#ifndef PK_ATT_BM  // (overridable only for blocking experiments)
#define PK_ATT_BM 64
#define PK_ATT_BNF 192
#define PK_ATT_BNB 96
#endif
constexpr int kBM = PK_ATT_BM;    // queries per block: a multiple of 4 vectors for every ISA and dtype
constexpr int kBNf = PK_ATT_BNF;  // keys per block in the forward: K/V blocks of 192 rows stay in L2
constexpr int kBNb = PK_ATT_BNB;  // keys per block in the backward (two [BN][BM] blocks + dK/dV accumulators)
// ---- dropout: Philox4x32-10, lane-wise -------------------------------------------------------
// keep(idx) = first output word of Philox4x32-10 at counter (idx lo, idx hi, 0, 0), key = the
// seed's two words, compared with floor(p * 2^32) (ops/attention.py documents the rule; the
// Triton kernels and the NumPy reference implement the same bits).
template <typename T> struct LaneInts;  // one uint32 / uint64 per lane of V<T>
template <> struct LaneInts<float> {
  typedef uint32_t U __attribute__((vector_size(PK_VBYTES)));
  typedef uint64_t W __attribute__((vector_size(2 * PK_VBYTES)));
};
template <> struct LaneInts<double> {
  typedef uint32_t U __attribute__((vector_size(PK_VBYTES / 2)));
  typedef uint64_t W __attribute__((vector_size(PK_VBYTES)));
};

template <typename T>
struct Philox {
  using U = typename LaneInts<T>::U;
  using W = typename LaneInts<T>::W;
  uint32_t k0, k1, thresh;
  T keep_scale;

  // A lane-wise multiplier: keep_scale where the element is kept, 0 where dropped.
  V<T> factor(W idx) const {
    U c0 = __builtin_convertvector(idx, U);
    U c1 = __builtin_convertvector(idx >> 32, U);
    U c2 = U{}, c3 = U{};
    uint32_t a = k0, b = k1;
#pragma GCC unroll 10
    for (int r = 0; r < 10; ++r) {
      const W p0 = __builtin_convertvector(c0, W) * uint64_t(0xD2511F53u);
      const W p1 = __builtin_convertvector(c2, W) * uint64_t(0xCD9E8D57u);
      const U hi0 = __builtin_convertvector(p0 >> 32, U), lo0 = __builtin_convertvector(p0, U);
      const U hi1 = __builtin_convertvector(p1 >> 32, U), lo1 = __builtin_convertvector(p1, U);
      c0 = hi1 ^ c1 ^ a;
      c1 = lo1;
      c2 = hi0 ^ c3 ^ b;
      c3 = lo0;
      a += 0x9E3779B9u;
      b += 0xBB67AE85u;
    }
    const IV<T> keep = __builtin_convertvector(c0 >= thresh, IV<T>);
    return keep ? vbcast<T>(keep_scale) : V<T>{};
  }
};

template <typename T>
Philox<T> make_philox(const AttnArgs<T>& a) {
  const double t = std::floor(a.dropout_p * 4294967296.0);
  return Philox<T>{static_cast<uint32_t>(a.seed & 0xffffffffu), static_cast<uint32_t>(a.seed >> 32),
                   static_cast<uint32_t>(std::min(t, 4294967295.0)), static_cast<T>(1.0 / (1.0 - a.dropout_p))};
}

// ---- scores of one block: S^T[j][i] (base 2) for keys j0.., queries i0.. -----------------------
// S^T = K_blk Qt (Qt: [D][BM], pre-scaled by scale*log2e, zero past the last query), then the
// mask (times log2e, or -inf where a bool mask is false) and the causal -inf above the diagonal.
template <typename T>
struct Head {
  const AttnArgs<T>* a;
  int64_t b, h;
  const T* k() const { return a->k + b * a->sk[0] + h * a->sk[1]; }
  const T* v() const { return a->v + b * a->sv[0] + h * a->sv[1]; }
  const T* q() const { return a->q + b * a->sq[0] + h * a->sq[1]; }
  uint64_t row_index(int64_t i) const { return static_cast<uint64_t>((b * a->H + h) * a->N + i) * a->S; }
};

// An additive mask value in base 2. A finite value whose scaled value overflows (finfo.min, the
// padding value of many libraries) stays the lowest finite number, not -inf: a row holding it on
// every key then has equal scores and uniform weights, as in torch. -inf and NaN pass through.
template <typename T> inline T mask2(T m) {
  const T x = m * static_cast<T>(kLog2e);
  return x < std::numeric_limits<T>::lowest() && m >= std::numeric_limits<T>::lowest()
             ? std::numeric_limits<T>::lowest() : x;
}

template <typename T>
void block_scores(const Head<T>& hd, int64_t i0, int64_t nq, int64_t j0, int64_t nk, const T* qt, T* st) {
  constexpr int L = lanes<T>();
  constexpr int NVQ = kBM / L;
  const AttnArgs<T>& a = *hd.a;
  gemm_rows<T>(nk, a.D, hd.k() + j0 * a.sk[2], a.sk[2], a.sk[3], qt, kBM, NVQ, st, kBM, kZero);
  if (a.mask_kind) {
    const int64_t mq = a.sm[2], mk = a.sm[3];
    const int64_t base = hd.b * a.sm[0] + hd.h * a.sm[1] + i0 * mq + j0 * mk;
    if (a.mask_kind == 1) {
      const uint8_t* m = static_cast<const uint8_t*>(a.mask) + base;
      for (int64_t j = 0; j < nk; ++j)
        for (int64_t i = 0; i < nq; ++i)
          if (!m[i * mq + j * mk]) st[j * kBM + i] = neg_inf<T>();
    } else {
      const T* m = static_cast<const T*>(a.mask) + base;
      if (mq == 0) {  // the same mask for every query (a key padding mask): one broadcast per key
        for (int64_t j = 0; j < nk; ++j) {
          const V<T> mv = vbcast<T>(mask2(m[j * mk]));
          for (int v = 0; v < NVQ; ++v) vstore(st + j * kBM + v * L, vload(st + j * kBM + v * L) + mv);
        }
      } else {
        for (int64_t i = 0; i < nq; ++i)
          for (int64_t j = 0; j < nk; ++j) st[j * kBM + i] += mask2(m[i * mq + j * mk]);
      }
    }
  }
  if (a.causal && j0 + nk - 1 > i0) {  // the block reaches above the diagonal: key j > query i
    for (int64_t j = 0; j < nk; ++j) {
      const int64_t first = j0 + j - i0;  // queries before this index (within the block) are masked
      for (int64_t i = 0; i < std::min<int64_t>(first, kBM); ++i) st[j * kBM + i] = neg_inf<T>();
    }
  }
}

// Qt[d][i] = q[i0 + i][d] * mul for i < nq, 0 for nq <= i < BM.
template <typename T>
void pack_qt(const T* q, int64_t s_row, int64_t s_col, int64_t i0, int64_t nq, int64_t D, T mul, T* qt) {
  for (int64_t d = 0; d < D; ++d) std::memset(qt + d * kBM + nq, 0, (kBM - nq) * sizeof(T));
  for (int64_t i = 0; i < nq; ++i) {
    const T* row = q + (i0 + i) * s_row;
    for (int64_t d = 0; d < D; ++d) qt[d * kBM + i] = row[d * s_col] * mul;
  }
}

template <typename T> inline T* carve(char*& p, int64_t n) {
  T* r = reinterpret_cast<T*>(p);
  p += (n * sizeof(T) + 63) / 64 * 64;
  return r;
}

// ---- forward -------------------------------------------------------------------------------------
template <typename T>
void forward_task(const AttnArgs<T>& a, int64_t bh, int64_t qb) {
  constexpr int L = lanes<T>();
  constexpr int NVQ = kBM / L;
  const Head<T> hd{&a, bh / a.H, bh % a.H};
  const int64_t i0 = qb * kBM, nq = std::min<int64_t>(kBM, a.N - i0);
  const int64_t Dv = a.Dv;
  char* p = static_cast<char*>(tls_buffer(0, (a.D + Dv + kBNf + 4) * kBM * sizeof(T) + 4 * 64));
  T* qt = carve<T>(p, a.D * kBM);
  T* ot = carve<T>(p, Dv * kBM);
  T* st = carve<T>(p, kBNf * kBM);
  T* alpha = carve<T>(p, kBM);
  pack_qt(hd.q(), a.sq[2], a.sq[3], i0, nq, a.D, static_cast<T>(a.scale * kLog2e), qt);
  std::memset(ot, 0, Dv * kBM * sizeof(T));
  V<T> m[NVQ], l[NVQ];
  for (int v = 0; v < NVQ; ++v) { m[v] = vbcast(neg_inf<T>()); l[v] = V<T>{}; }
  const bool dropout = a.dropout_p > 0;
  const Philox<T> rng = make_philox(a);
  typename Philox<T>::W rows[NVQ];  // counter of (query lane, key 0)
  if (dropout)
    for (int v = 0; v < NVQ; ++v)
      for (int t = 0; t < L; ++t) rows[v][t] = hd.row_index(i0 + v * L + t);
  const int64_t jend = a.causal ? std::min(a.S, i0 + nq) : a.S;  // query i sees keys j <= i
  for (int64_t j0 = 0; j0 < jend; j0 += kBNf) {
    const int64_t nk = std::min<int64_t>(kBNf, jend - j0);
    block_scores(hd, i0, nq, j0, nk, qt, st);
    V<T> mx[NVQ], use[NVQ], sum[NVQ];
    for (int v = 0; v < NVQ; ++v) mx[v] = m[v];
    for (int64_t j = 0; j < nk; ++j)
#pragma GCC unroll 8
      for (int v = 0; v < NVQ; ++v) mx[v] = vmax(mx[v], vload(st + j * kBM + v * L));
    for (int v = 0; v < NVQ; ++v) {
      use[v] = mx[v] == neg_inf<T>() ? V<T>{} : mx[v];  // nothing seen yet: exp2(-inf - 0) = 0
      vstore(alpha + v * L, vexp2<T>(m[v] - use[v]));
      sum[v] = V<T>{};
    }
    for (int64_t j = 0; j < nk; ++j) {
#pragma GCC unroll 8
      for (int v = 0; v < NVQ; ++v) {
        V<T> pv = vexp2<T>(vload(st + j * kBM + v * L) - use[v]);
        sum[v] += pv;
        if (dropout) pv *= rng.factor(rows[v] + static_cast<uint64_t>(j0 + j));
        vstore(st + j * kBM + v * L, pv);
      }
    }
    for (int v = 0; v < NVQ; ++v) {
      l[v] = l[v] * vload(alpha + v * L) + sum[v];
      m[v] = mx[v];
    }
    // O^T = alpha * O^T + V_blk^T P^T   (A = V^T read in place: row e, column j)
    gemm_rows<T>(Dv, nk, hd.v() + j0 * a.sv[2], a.sv[3], a.sv[2], st, kBM, NVQ, ot, kBM, kScale, alpha);
  }
  // out = O^T / l, lse = (m + log2 l) ln 2; a row that saw nothing (l = 0) gets 0 and -inf
  T mf[kBM], lf[kBM];
  for (int v = 0; v < NVQ; ++v) { vstore(mf + v * L, m[v]); vstore(lf + v * L, l[v]); }
  T* out = a.out + hd.b * a.so[0] + hd.h * a.so[1] + i0 * a.so[2];
  T* lse = a.lse + hd.b * a.sl[0] + hd.h * a.sl[1] + i0 * a.sl[2];
  for (int64_t i = 0; i < nq; ++i) {
    const T inv = lf[i] > 0 ? T(1) / lf[i] : T(0);
    lse[i * a.sl[2]] = lf[i] > 0 ? static_cast<T>((mf[i] + std::log2(lf[i])) * kLn2) : neg_inf<T>();
    T* orow = out + i * a.so[2];
    for (int64_t e = 0; e < Dv; ++e) orow[e * a.so[3]] = ot[e * kBM + i] * inv;
  }
}

template <typename T>
void forward_impl(const AttnArgs<T>& a) {
  const int64_t BH = a.B * a.H, nqb = ceil_div(a.N, kBM);
  // Head-major (consecutive tasks share K and V in cache); a causal head's longest blocks first.
  parallel_for(BH * nqb, [&](int64_t t, int) {
    const int64_t bh = t / nqb, r = t % nqb;
    forward_task(a, bh, a.causal ? nqb - 1 - r : r);
  });
}

// ---- backward ------------------------------------------------------------------------------------
// Per-head operands in the layouts the GEMMs read: Q^T and dO^T blocks ([nqb][D][BM], Q^T
// pre-scaled by scale*log2e), Q, dO and K rows padded to whole vectors, lse in base 2 (+inf for a
// fully masked row or a padding row: P = 0 there) and Delta = rowsum(dO * O).
template <typename T>
struct HeadOperands {
  int64_t Dp, Dvp, nqb, Np;
  T *qt, *dot, *qr, *dor, *kr, *lse2, *delta;

  explicit HeadOperands(const AttnArgs<T>& a)
      : Dp(ceil_div(a.D, lanes<T>()) * lanes<T>()), Dvp(ceil_div(a.Dv, lanes<T>()) * lanes<T>()),
        nqb(ceil_div(a.N, kBM)), Np(nqb * kBM) {}

  size_t bytes(const AttnArgs<T>& a) const {
    return (Np * (a.D + a.Dv + Dp + Dvp + 2) + a.S * Dp) * sizeof(T) + 8 * 64;
  }

  void carve_from(const AttnArgs<T>& a, char* p) {
    qt = carve<T>(p, Np * a.D);
    dot = carve<T>(p, Np * a.Dv);
    qr = carve<T>(p, Np * Dp);
    dor = carve<T>(p, Np * Dvp);
    kr = carve<T>(p, a.S * Dp);
    lse2 = carve<T>(p, Np);
    delta = carve<T>(p, Np);
  }

  void fill(const AttnArgs<T>& a, int64_t b, int64_t h) {
    const T* q = a.q + b * a.sq[0] + h * a.sq[1];
    const T* k = a.k + b * a.sk[0] + h * a.sk[1];
    const T* dout = a.dout + b * a.sdo[0] + h * a.sdo[1];
    const T* out = a.out + b * a.so[0] + h * a.so[1];
    const T* lse = a.lse + b * a.sl[0] + h * a.sl[1];
    const T qmul = static_cast<T>(a.scale * kLog2e);
    for (int64_t qb = 0; qb < nqb; ++qb) {
      const int64_t nq = std::min<int64_t>(kBM, a.N - qb * kBM);
      pack_qt(q, a.sq[2], a.sq[3], qb * kBM, nq, a.D, qmul, qt + qb * kBM * a.D);
      pack_qt(dout, a.sdo[2], a.sdo[3], qb * kBM, nq, a.Dv, T(1), dot + qb * kBM * a.Dv);
    }
    std::memset(qr, 0, Np * Dp * sizeof(T));
    std::memset(dor, 0, Np * Dvp * sizeof(T));
    std::memset(kr, 0, a.S * Dp * sizeof(T));
    for (int64_t i = 0; i < Np; ++i) {
      lse2[i] = pos_inf<T>();
      delta[i] = 0;
    }
    for (int64_t i = 0; i < a.N; ++i) {
      T dl = 0;
      for (int64_t d = 0; d < a.D; ++d) qr[i * Dp + d] = q[i * a.sq[2] + d * a.sq[3]];
      for (int64_t e = 0; e < a.Dv; ++e) {
        const T g = dout[i * a.sdo[2] + e * a.sdo[3]];
        dor[i * Dvp + e] = g;
        dl += g * out[i * a.so[2] + e * a.so[3]];
      }
      delta[i] = dl;
      const T li = lse[i * a.sl[2]];
      lse2[i] = li == neg_inf<T>() ? pos_inf<T>() : static_cast<T>(li * kLog2e);
    }
    for (int64_t j = 0; j < a.S; ++j)
      for (int64_t d = 0; d < a.D; ++d) kr[j * Dp + d] = k[j * a.sk[2] + d * a.sk[3]];
  }
};

// Key blocks kb = chunk, chunk + n_chunks, ... of one head: writes their rows of dk and dv and
// accumulates dS K into dq_part ([Np][Dp], not scaled).
template <typename T>
void backward_keys(const AttnArgs<T>& a, const HeadOperands<T>& op, int64_t b, int64_t h, int64_t chunk,
                   int64_t n_chunks, T* dq_part) {
  constexpr int L = lanes<T>();
  constexpr int NVQ = kBM / L;
  const Head<T> hd{&a, b, h};
  const int64_t Dp = op.Dp, Dvp = op.Dvp, nkb = ceil_div(a.S, kBNb);
  char* p = static_cast<char*>(tls_buffer(1, (2 * kBNb * kBM + kBNb * (Dp + Dvp)) * sizeof(T) + 4 * 64));
  T* pt = carve<T>(p, kBNb * kBM);  // P^T (after dropout)
  T* ds = carve<T>(p, kBNb * kBM);  // dP^T, then dS^T
  T* dk = carve<T>(p, kBNb * Dp);
  T* dv = carve<T>(p, kBNb * Dvp);
  const bool dropout = a.dropout_p > 0;
  const Philox<T> rng = make_philox(a);
  const T* vh = hd.v();
  for (int64_t kb = chunk; kb < nkb; kb += n_chunks) {
    const int64_t j0 = kb * kBNb, nk = std::min<int64_t>(kBNb, a.S - j0);
    std::memset(dk, 0, kBNb * Dp * sizeof(T));
    std::memset(dv, 0, kBNb * Dvp * sizeof(T));
    // causal: queries i >= j0 see this block; the first block holding one is j0 / BM
    for (int64_t qb = a.causal ? j0 / kBM : 0; qb < op.nqb; ++qb) {
      const int64_t i0 = qb * kBM, nq = std::min<int64_t>(kBM, a.N - i0);
      block_scores(hd, i0, nq, j0, nk, op.qt + qb * kBM * a.D, pt);
      gemm_rows<T>(nk, a.Dv, vh + j0 * a.sv[2], a.sv[2], a.sv[3], op.dot + qb * kBM * a.Dv, kBM, NVQ, ds, kBM,
                   kZero);
      const V<T> one = vbcast<T>(T(1));
      V<T> lse[NVQ], dl[NVQ];
      typename Philox<T>::W rows[NVQ];
      for (int v = 0; v < NVQ; ++v) {
        lse[v] = vload(op.lse2 + i0 + v * L);
        dl[v] = vload(op.delta + i0 + v * L);
        if (dropout)
          for (int t = 0; t < L; ++t) rows[v][t] = hd.row_index(i0 + v * L + t);
      }
      for (int64_t j = 0; j < nk; ++j) {
#pragma GCC unroll 8
        for (int v = 0; v < NVQ; ++v) {
          T* sp = pt + j * kBM + v * L;
          T* dp = ds + j * kBM + v * L;
          // P <= 1 exactly; the min keeps it so where lse lost precision (scores near the
          // largest finite number, e.g. a row masked with finfo.min on every key)
          const V<T> pr = vmin(vexp2<T>(vload(sp) - lse[v]), one);
          V<T> dpv = vload(dp);
          if (dropout) {
            const V<T> f = rng.factor(rows[v] + static_cast<uint64_t>(j0 + j));
            vstore(sp, pr * f);
            dpv *= f;
          } else {
            vstore(sp, pr);
          }
          vstore(dp, pr * (dpv - dl[v]));
        }
      }
      if (a.dmask) {
        T* dm = a.dmask + b * a.sdm[0] + h * a.sdm[1] + i0 * a.sdm[2] + j0 * a.sdm[3];
        for (int64_t i = 0; i < nq; ++i)
          for (int64_t j = 0; j < nk; ++j) dm[i * a.sdm[2] + j * a.sdm[3]] = ds[j * kBM + i];
      }
      // dV += P^T dO, dK += dS^T Q (k = queries), dQ += dS K (k = keys)
      gemm_rows<T>(nk, nq, pt, kBM, 1, op.dor + i0 * Dvp, Dvp, Dvp / L, dv, Dvp, kLoad);
      gemm_rows<T>(nk, nq, ds, kBM, 1, op.qr + i0 * Dp, Dp, Dp / L, dk, Dp, kLoad);
      gemm_rows<T>(nq, nk, ds, 1, kBM, op.kr + j0 * Dp, Dp, Dp / L, dq_part + i0 * Dp, Dp, kLoad);
    }
    const T scale = static_cast<T>(a.scale);
    T* dkh = a.dk + b * a.sdk[0] + h * a.sdk[1] + j0 * a.sdk[2];
    T* dvh = a.dv + b * a.sdv[0] + h * a.sdv[1] + j0 * a.sdv[2];
    for (int64_t j = 0; j < nk; ++j) {
      for (int64_t d = 0; d < a.D; ++d) dkh[j * a.sdk[2] + d * a.sdk[3]] = dk[j * Dp + d] * scale;
      for (int64_t e = 0; e < a.Dv; ++e) dvh[j * a.sdv[2] + e * a.sdv[3]] = dv[j * Dvp + e];
    }
  }
}

// dmask is written only where a block is computed: zero the whole head's rows first.
template <typename T>
void zero_dmask(const AttnArgs<T>& a, int64_t b, int64_t h) {
  if (!a.dmask || !a.causal) return;
  T* dm = a.dmask + b * a.sdm[0] + h * a.sdm[1];
  for (int64_t i = 0; i < a.N; ++i)
    for (int64_t j = 0; j < a.S; ++j) dm[i * a.sdm[2] + j * a.sdm[3]] = 0;
}

template <typename T>
void write_dq(const AttnArgs<T>& a, int64_t b, int64_t h, const T* const* parts, int64_t n_parts, int64_t Dp) {
  T* dq = a.dq + b * a.sdq[0] + h * a.sdq[1];
  const T scale = static_cast<T>(a.scale);
  for (int64_t i = 0; i < a.N; ++i)
    for (int64_t d = 0; d < a.D; ++d) {
      T s = 0;
      for (int64_t c = 0; c < n_parts; ++c) s += parts[c][i * Dp + d];
      dq[i * a.sdq[2] + d * a.sdq[3]] = s * scale;
    }
}

template <typename T>
void backward_impl(const AttnArgs<T>& a) {
  const int64_t BH = a.B * a.H, threads = num_threads();
  const HeadOperands<T> shape(a);
  const size_t op_bytes = shape.bytes(a);
  const int64_t part_elems = shape.Np * shape.Dp;
  if (threads == 1 || BH % threads == 0 || BH >= 4 * threads) {
    // One task per head: its operands and its dQ in this thread's buffers.
    parallel_for(BH, [&](int64_t bh, int) {
      const int64_t b = bh / a.H, h = bh % a.H;
      HeadOperands<T> op(a);
      op.carve_from(a, static_cast<char*>(tls_buffer(2, op_bytes)));
      op.fill(a, b, h);
      T* part = static_cast<T*>(tls_buffer(3, part_elems * sizeof(T)));
      std::memset(part, 0, part_elems * sizeof(T));
      zero_dmask(a, b, h);
      backward_keys(a, op, b, h, 0, 1, part);
      const T* parts[1] = {part};
      write_dq(a, b, h, parts, 1, op.Dp);
    });
    return;
  }
  // Few heads: per head, the key blocks split over the threads (interleaved, which also evens
  // out a causal mask), each chunk with its own dQ partial, summed in chunk order.
  std::vector<char> op_buf(op_bytes + 64);
  std::vector<T> part_buf(static_cast<size_t>(threads * part_elems) + 64);
  char* op_mem = op_buf.data() + (64 - reinterpret_cast<uintptr_t>(op_buf.data()) % 64) % 64;
  std::vector<const T*> parts(threads);
  for (int64_t c = 0; c < threads; ++c) parts[c] = part_buf.data() + c * part_elems;
  for (int64_t bh = 0; bh < BH; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    HeadOperands<T> op(a);
    op.carve_from(a, op_mem);
    op.fill(a, b, h);
    std::fill(part_buf.begin(), part_buf.end(), T(0));
    zero_dmask(a, b, h);
    parallel_for(threads, [&](int64_t c, int) {
      backward_keys(a, op, b, h, c, threads, const_cast<T*>(parts[c]));
    });
    write_dq(a, b, h, parts.data(), threads, op.Dp);
  }
}

}  // namespace

void attention_forward(const AttnArgs<float>& a) { forward_impl(a); }
void attention_forward(const AttnArgs<double>& a) { forward_impl(a); }
void attention_backward(const AttnArgs<float>& a) { backward_impl(a); }
void attention_backward(const AttnArgs<double>& a) { backward_impl(a); }

}  // namespace PK_NS
}  // namespace pk
