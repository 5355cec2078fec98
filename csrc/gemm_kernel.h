// gemm_kernel.h — the GEMM building blocks shared by every kernel that is a GEMM underneath
// (gemm.cpp, conv2d.cpp, attention.cpp, rnn.cpp): cache blocking, packing, the register-tiled microkernel, the tile store
// with the fused epilogue, and the activations. Included inside namespace pk::PK_NS::{anonymous}
// by files compiled once per ISA; see gemm.cpp's header for how the blocking was chosen.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

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
// Slots: 0/1 GEMM A/B panels; conv2d.cpp and attention.cpp use 2..5 for their own tables.
inline void* tls_buffer(int which, size_t bytes) {
  struct Buf {
    void* p = nullptr;
    size_t cap = 0;
    ~Buf() { std::free(p); }
  };
  static thread_local Buf bufs[6];
  Buf& b = bufs[which];
  if (b.cap < bytes) {
    std::free(b.p);
    b.cap = (bytes + 4095) / 4096 * 4096;
    b.p = std::aligned_alloc(64, b.cap);
  }
  return b.p;
}

// A call's scratch of n elements, contents undefined: 1 MiB and more from the block cache
// (memory.cpp: big buffers keep their faulted-in pages from call to call), less from malloc.
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t n) {
    const size_t bytes = static_cast<size_t>(n > 0 ? n : 1) * sizeof(T);
    if (bytes >= (size_t(1) << 20)) {
      block_ = cache_acquire(bytes);
    } else {
      block_.p = std::malloc(bytes);
      if (!block_.p) throw std::bad_alloc();
      small_ = true;
    }
  }
  ~Scratch() {
    if (small_) std::free(block_.p); else cache_release(block_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* data() const { return static_cast<T*>(block_.p); }

 private:
  CacheBlock block_{nullptr, 0};
  bool small_ = false;
};

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

// Splits one problem of mb x nb micro-tiles into `parts` rectangles (tm x tn) with the
// smallest largest piece.
inline void choose_split(int64_t mb, int64_t nb, int64_t parts, int64_t* tm, int64_t* tn) {
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

// ---- small GEMMs on register tiles that read A in place (attention.cpp, rnn.cpp) ------------
#if defined(PK_ISA_AVX512)
constexpr int kTileMR = 6;  // 6 x 4 vectors = 24 accumulators of 32
#else
constexpr int kTileMR = 2;  // 2 x 4 vectors = 8 accumulators of 16
#endif

// ---- register-tiled GEMM on one tile ---------------------------------------------------------
// c[i][0 : NV*L] = init + sum_k a[i*a_si + k*a_sk] * b[k*b_sk + 0 : NV*L]   for i < mr <= MR,
// init = 0 (kZero), c itself (kLoad) or c scaled column-wise by colscale (kScale). A is read in
// place with any strides (rows past mr repeat row mr-1 and are not stored); B rows are NV
// contiguous vectors.
enum Init { kZero, kLoad, kScale };

template <typename T, int MR, int NV>
inline void tile_gemm(int64_t kc, const T* __restrict a, int64_t a_si, int64_t a_sk, int64_t mr,
                      const T* __restrict b, int64_t b_sk, T* __restrict c, int64_t ldc, Init init,
                      const T* colscale) {
  constexpr int L = lanes<T>();
  const T* ar[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) ar[i] = a + (i < mr ? i : mr - 1) * a_si;
  V<T> acc[MR][NV];
  if (init == kZero) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = V<T>{};
  } else {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const T* crow = c + (i < mr ? i : mr - 1) * ldc;
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = vload(crow + j * L);
    }
    if (init == kScale) {
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        const V<T> s = vload(colscale + j * L);
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) acc[i][j] *= s;
      }
    }
  }
  for (int64_t k = 0; k < kc; ++k) {
    V<T> bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = vload(b + k * b_sk + j * L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V<T> av = vbcast(ar[i][k * a_sk]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] += av * bv[j];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if (i >= mr) break;
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) vstore(c + i * ldc + j * L, acc[i][j]);
  }
}

// The columns of one GEMM in chunks of 4, 2 and 1 vectors.
template <typename T, int MR>
inline void tile_row(int64_t kc, const T* a, int64_t a_si, int64_t a_sk, int64_t mr, const T* b, int64_t b_sk,
                     int64_t nvec, T* c, int64_t ldc, Init init, const T* colscale) {
  constexpr int L = lanes<T>();
  auto cs = [&](int64_t j) { return colscale ? colscale + j * L : nullptr; };
  int64_t j = 0;
  for (; j + 4 <= nvec; j += 4)
    tile_gemm<T, MR, 4>(kc, a, a_si, a_sk, mr, b + j * L, b_sk, c + j * L, ldc, init, cs(j));
  if (j + 2 <= nvec) {
    tile_gemm<T, MR, 2>(kc, a, a_si, a_sk, mr, b + j * L, b_sk, c + j * L, ldc, init, cs(j));
    j += 2;
  }
  if (j < nvec) tile_gemm<T, MR, 1>(kc, a, a_si, a_sk, mr, b + j * L, b_sk, c + j * L, ldc, init, cs(j));
}

// C[m][nvec vectors] (init as above) += A[m][kc] B[kc][nvec vectors]: rows in tiles of kTileMR, the
// tail on a smaller tile.
template <typename T>
void gemm_rows(int64_t m, int64_t kc, const T* a, int64_t a_si, int64_t a_sk, const T* b, int64_t b_sk,
               int64_t nvec, T* c, int64_t ldc, Init init, const T* colscale = nullptr) {
  int64_t i = 0;
  for (; i + kTileMR <= m; i += kTileMR)
    tile_row<T, kTileMR>(kc, a + i * a_si, a_si, a_sk, kTileMR, b, b_sk, nvec, c + i * ldc, ldc, init, colscale);
  const int64_t r = m - i;
  if (r <= 0) return;
  const T* ai = a + i * a_si;
  T* ci = c + i * ldc;
#if defined(PK_ISA_AVX512)
  if (r > 4)
    tile_row<T, 6>(kc, ai, a_si, a_sk, r, b, b_sk, nvec, ci, ldc, init, colscale);
  else if (r > 2)
    tile_row<T, 4>(kc, ai, a_si, a_sk, r, b, b_sk, nvec, ci, ldc, init, colscale);
  else
    tile_row<T, 2>(kc, ai, a_si, a_sk, r, b, b_sk, nvec, ci, ldc, init, colscale);
#else
  tile_row<T, 2>(kc, ai, a_si, a_sk, r, b, b_sk, nvec, ci, ldc, init, colscale);
#endif
}

}  // namespace
}  // namespace PK_NS
}  // namespace pk
