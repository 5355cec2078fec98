// pool2d.cpp — 2-D max / average / adaptive pooling, forward and backward, float and double.
//
// Computes, for x [N, C, H, W] -> out [N, C, OH, OW] (any strides, in elements):
//   max_pool2d      out = max over the window, idx = flat h*W + w of the winner (torch's rule:
//                   rows then columns, take v when v > max or v is NaN: ties keep the FIRST
//                   maximum, the LAST NaN wins; a window of -inf only reports its first in-range
//                   tap); adaptive windows [floor(i*H/OH), ceil((i+1)*H/OH)) use the same rule
//   avg_pool2d      out = window sum / divisor (divisor_override, or the window clipped to the
//                   padded input when count_include_pad, else clipped to the input); adaptive: mean
//   backward        max: grad_in zeroed, then grad_out scattered through idx;
//                   avg: gather form, grad_in[h, w] = sum over the outputs whose window covers
//                   (h, w) of grad_out / divisor, so every grad_in element is written once.
// Indices are int64, or int32 (Pool2dArgs::idx32) for the copy the ops layer keeps privately.
// Compiled three times (AVX-512, AVX2, generic: see isa.h), in namespaces pk::avx512/avx2/generic.
//
// Layouts (memory bound: one pass over the input, no transposed copies of it):
//   NCHW (W has unit stride), one task item = one output row:
//     max   every input row a window needs is de-interleaved once by the W stride s into s
//           -inf-padded phase buffers (RowRing: s = 2 -> two loads + two vpermt2ps per 32
//           columns; rows shared by overlapping windows are kept in a ring of kH*dH slots). Then
//           every tap of 16 (fp32, AVX-512) outputs is one plain load from L1, and 4 output
//           blocks run through the taps together (4 independent select chains). Padding needs
//           no special case: -inf never wins, and each lane starts from -inf and the index of
//           its first in-range tap (torch's rule exactly). The row 4 below is prefetched
//           (measured ~20% faster at 32x64x112x112: the hardware sees one short stream per row).
//           Planes whose output rows are shorter than a vector (OW < 16: the seed LeNet's 12x12
//           and 4x4) instead vectorise along the flattened plane with masked gathers through
//           offset tables built once per call.
//     avg   the window's rows are summed into a zero-padded row buffer (L1), then the kW taps of
//           every output are strided loads of that buffer (s = 2: vpermt2ps); divisor per lane.
//     avg backward: the mirror image: covering grad_out rows (times 1/divisor) summed into a
//           zero-padded row buffer, expanded to input columns (s = 2: each value into 2 lanes).
//   NHWC / channels_last (C has unit stride), one task item = one output (or input) pixel:
//     every window tap is a contiguous run of C values: vectors over C, 4 at a time; the last
//     vector overlaps the previous one, and C < 16 uses one partial vector.
//   any other strides: scalar loops (correct, not fast).
// Loads that may run past a row or pixel stay inside the input's address span (checked).
// Threads: items cut into contiguous chunks, 8 per thread, claimed dynamically (pk::parallel_for
// on torch's OpenMP team); under ~32K input elements one thread does it all. The max backward
// scatters, so its tasks own whole grad_in planes (n, c-range): no two threads write one
// element; when N*C is below the thread count each task owns a band of rows of a plane and
// skips the indices outside it. Output buffers of 16 MiB and more get MADV_HUGEPAGE first
// (fresh mmap'd pages fault 512x less often; see prefer_huge_pages).
//
// Test: pytest tests/test_pool2d.py -k cpp      Benchmark: python -m pykernels bench pool2d
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "common.h"
#include "isa.h"

namespace pk {
namespace PK_NS {
namespace {

// ---- vector helpers ------------------------------------------------------------------------
// int32 lanes matching V<T> lane for lane (indices), and their int64 widening
template <typename T> struct IVec;
template <> struct IVec<float> {
  typedef int32_t i32 __attribute__((vector_size(PK_VBYTES)));
  typedef int64_t i64 __attribute__((vector_size(PK_VBYTES * 2)));
};
template <> struct IVec<double> {
  typedef int32_t i32 __attribute__((vector_size(PK_VBYTES / 2)));
  typedef int64_t i64 __attribute__((vector_size(PK_VBYTES)));
};
template <typename T> using I32 = typename IVec<T>::i32;
template <typename T> using I64 = typename IVec<T>::i64;
template <typename T> using Mask = decltype(V<T>{} > V<T>{});  // -1 / 0 lanes of T's width

template <typename T> inline I32<T> ibcast(int32_t s) { return I32<T>{} + s; }
template <typename T> inline I32<T> iota() {
  I32<T> r{};
  for (int i = 0; i < lanes<T>(); ++i) r[i] = i;
  return r;
}
template <typename T> inline I32<T> narrow_mask(Mask<T> m) { return __builtin_convertvector(m, I32<T>); }
// indices are int64 (torch's), or int32 when the ops layer keeps them only for its own backward
template <typename T, typename IX> inline void store_idx(IX* p, I32<T> v) {
  if constexpr (sizeof(IX) == 4) {
    std::memcpy(p, &v, sizeof v);
  } else {
    I64<T> w = __builtin_convertvector(v, I64<T>);
    std::memcpy(p, &w, sizeof w);
  }
}

template <typename T, size_t... K>
inline V<T> even_lanes(V<T> a, V<T> b, std::index_sequence<K...>) {
  return __builtin_shufflevector(a, b, (2 * K)...);
}
template <typename T, size_t... K>
inline V<T> odd_lanes(V<T> a, V<T> b, std::index_sequence<K...>) {
  return __builtin_shufflevector(a, b, (2 * K + 1)...);
}
template <typename T, size_t... K>
inline V<T> dup_lanes(V<T> a, std::index_sequence<K...>) {
  return __builtin_shufflevector(a, a, (K / 2)...);
}

// v[i] = p[i * s]. S = 2 reads p[0 .. 2L-1] (one element past the last lane).
template <typename T, int S>
inline V<T> sload(const T* p, int64_t s) {
  if constexpr (S == 1) {
    return vload(p);
  } else if constexpr (S == 2) {
    return even_lanes<T>(vload(p), vload(p + lanes<T>()), std::make_index_sequence<lanes<T>()>{});
  } else {
    V<T> v;
    for (int i = 0; i < lanes<T>(); ++i) v[i] = p[i * s];
    return v;
  }
}

// v[i] = valid[i] ? base[off[i]] : fill. Invalid lanes touch no memory (masked gather).
template <typename T> inline V<T> gather(const T* base, I32<T> off, Mask<T> valid, T fill);
#if defined(PK_ISA_AVX512)
template <> inline V<float> gather<float>(const float* b, I32<float> off, Mask<float> valid, float fill) {
  return (V<float>)_mm512_mask_i32gather_ps(_mm512_set1_ps(fill), _mm512_movepi32_mask((__m512i)valid),
                                            (__m512i)off, b, 4);
}
template <> inline V<double> gather<double>(const double* b, I32<double> off, Mask<double> valid, double fill) {
  return (V<double>)_mm512_mask_i32gather_pd(_mm512_set1_pd(fill), _mm512_movepi64_mask((__m512i)valid),
                                             (__m256i)off, b, 8);
}
#elif defined(PK_ISA_AVX2)
template <> inline V<float> gather<float>(const float* b, I32<float> off, Mask<float> valid, float fill) {
  return (V<float>)_mm256_mask_i32gather_ps(_mm256_set1_ps(fill), b, (__m256i)off, (__m256)valid, 4);
}
template <> inline V<double> gather<double>(const double* b, I32<double> off, Mask<double> valid, double fill) {
  return (V<double>)_mm256_mask_i32gather_pd(_mm256_set1_pd(fill), b, (__m128i)off, (__m256d)valid, 8);
}
#else
template <typename T> inline V<T> gather(const T* b, I32<T> off, Mask<T> valid, T fill) {
  V<T> v;
  for (int i = 0; i < lanes<T>(); ++i) v[i] = valid[i] ? b[off[i]] : fill;
  return v;
}
#endif

// ---- windows -------------------------------------------------------------------------------
// The taps of one output's window along one axis that lie inside the input: first + i*step,
// i < count. For an empty window `first` is still where torch points the index.
struct Axis {
  int64_t first, count, step;
};

inline Axis regular_axis(int64_t o, int64_t size, int k, int s, int p, int d) {
  const int64_t start = o * s - p;
  const int64_t first = start < 0 ? start + (-start + d - 1) / d * d : start;
  const int64_t last = std::min<int64_t>(start + int64_t(k - 1) * d, size - 1);
  return {first, first <= last ? (last - first) / d + 1 : 0, d};
}

inline Axis adaptive_axis(int64_t o, int64_t size, int64_t n_out) {
  const int64_t a = o * size / n_out, b = ((o + 1) * size + n_out - 1) / n_out;
  return {a, b - a, 1};
}

inline Axis axis_h(const PoolWindow& w, int64_t oh, int64_t H, int64_t OH) {
  return w.adaptive ? adaptive_axis(oh, H, OH) : regular_axis(oh, H, w.kH, w.sH, w.pH, w.dH);
}
inline Axis axis_w(const PoolWindow& w, int64_t ow, int64_t W, int64_t OW) {
  return w.adaptive ? adaptive_axis(ow, W, OW) : regular_axis(ow, W, w.kW, w.sW, w.pW, w.dW);
}

// avg_pool2d's divisor factor along one axis (torch: the window clipped to the padded input when
// count_include_pad, else to the input); the divisor is the product of the two factors.
inline int64_t avg_factor(int64_t o, int64_t size, int k, int s, int p, bool cip, const Axis& a) {
  if (!cip) return a.count;
  const int64_t start = o * s - p;
  return std::min<int64_t>(start + k, size + p) - start;
}

// ---- threads and buffers -------------------------------------------------------------------
constexpr int64_t kSerialElems = 32 * 1024;  // below this much input, threads cost more than they save

// body(u0, u1) over [0, units) in contiguous chunks; `elems` = input elements touched in all.
template <typename F>
void run_chunks(int64_t units, int64_t elems, F&& body) {
  if (units <= 0) return;
  const int threads = num_threads();
  if (threads <= 1 || units == 1 || elems < kSerialElems) {
    body(int64_t(0), units);
    return;
  }
  const int64_t chunks = std::min<int64_t>(units, int64_t(threads) * 8);
  parallel_for(chunks, [&](int64_t t, int) { body(units * t / chunks, units * (t + 1) / chunks); });
}

// Per-thread scratch, grown on demand (row buffers, divisor tables).
template <typename T> T* scratch(int which, size_t n) {
  static thread_local std::vector<T> bufs[8];
  std::vector<T>& b = bufs[which];
  if (b.size() < n) b.resize(n);
  return b.data();
}

// The extent of a 4-D buffer in bytes (non-negative strides), for pk::prefer_huge_pages.
template <typename P>
void prefer_huge_pages(const P* p, int64_t n0, int64_t n1, int64_t n2, int64_t n3, const int64_t* st) {
  if (n0 * n1 * n2 * n3 == 0) return;
  int64_t extent = 1;  // elements from the first to one past the last
  const int64_t n[4] = {n0, n1, n2, n3};
  for (int d = 0; d < 4; ++d) extent += (n[d] - 1) * (st[d] > 0 ? st[d] : 0);
  pk::prefer_huge_pages(p, extent * int64_t(sizeof(P)));
}

inline bool unit(int64_t size, int64_t stride) { return size <= 1 || stride == 1; }
enum class Layout { NCHW, NHWC, Strided };

// W unit stride everywhere -> NCHW rows; C unit stride everywhere -> channels_last pixels.
template <typename T>
Layout layout_of(const Pool2dArgs<T>& a, bool with_idx) {
  if (unit(a.W, a.s_in[3]) && unit(a.OW, a.s_out[3]) && (!with_idx || unit(a.OW, a.s_idx[3])))
    return Layout::NCHW;
  if (unit(a.C, a.s_in[1]) && unit(a.C, a.s_out[1]) && (!with_idx || unit(a.C, a.s_idx[1])))
    return Layout::NHWC;
  return Layout::Strided;
}

// int32 index lanes are exact while every flat index (and the offsets added to it) fits
inline bool small_plane(int64_t H, int64_t W) { return (H + 2) * (W + 2) < (int64_t(1) << 30); }

// ================================ max forward ================================================
// The scalar rule: x is one plane (row stride sh, column stride sw).
template <typename T, bool IDX, typename IX>
inline void max_scalar(const T* x, int64_t sh, int64_t sw, int64_t W, const Axis& ah,
                       const Axis& aw, T* o, IX* ix) {
  T m = -std::numeric_limits<T>::infinity();
  int64_t best = ah.first * W + aw.first;
  bool have = false;
  for (int64_t i = 0; i < ah.count; ++i) {
    const int64_t h = ah.first + i * ah.step;
    const T* row = x + h * sh;
    for (int64_t j = 0; j < aw.count; ++j) {
      const int64_t w = aw.first + j * aw.step;
      const T v = row[w * sw];
      // the first tap is taken unconditionally: same result as torch's start from -inf
      if (!have || v > m || v != v) {
        m = v;
        best = h * W + w;
        have = true;
      }
    }
  }
  *o = m;
  if constexpr (IDX) *ix = IX(best);
}

// Rows [r0, r1) of the N*C*OH output rows, decoded incrementally: body(n, c, oh).
template <typename F>
inline void for_rows(int64_t r0, int64_t r1, int64_t C, int64_t OH, F&& body) {
  int64_t p = r0 / OH, oh = r0 % OH, n = p / C, c = p % C;
  for (int64_t r = r0; r < r1; ++r) {
    body(n, c, oh);
    if (++oh == OH) {
      oh = 0;
      if (++c == C) c = 0, ++n;
    }
  }
}

// The window axis of every output row / column (no divisions in the row loops).
inline const Axis* axis_table(int which, int64_t n_out, int64_t size, int k, int s, int p, int d) {
  Axis* t = scratch<Axis>(which, n_out);
  for (int64_t o = 0; o < n_out; ++o) t[o] = regular_axis(o, size, k, s, p, d);
  return t;
}

// Input rows, de-interleaved by the W stride s into s phases and padded with `pad`:
// phase r, slot j holds column j*s + r (pad outside [0, W)). Then the kw tap of lanes
// ow0 .. ow0+L-1 (columns ow*s - pW + kw*dW) is ONE contiguous load from one phase, for any s,
// and windows in the padding need no special case. Rows live in a ring of `span` slots (the
// window's height), so rows shared by overlapping windows are de-interleaved once.
template <typename T, int S>
struct RowRing {
  int64_t W, s, joff, plen, span;
  T* buf;
  int64_t* held;  // input row held by each slot (per plane: reset() between planes)

  void init(int64_t W_, int64_t s_, int64_t pad_cols, int64_t max_col, int64_t span_, T pad) {
    W = W_, s = s_, span = span_;
    joff = (pad_cols + s - 1) / s + 1;
    plen = joff + max_col / s + 2 + lanes<T>();
    buf = scratch<T>(2, size_t(span * s * plen));
    held = scratch<int64_t>(4, size_t(span));
    std::fill(buf, buf + span * s * plen, pad);
    reset();
  }
  void reset() { std::fill(held, held + span, int64_t(-1)); }
  // pointer to slot index 0 (column -joff*s ...) of phase 0 of input row h, filled on demand
  const T* row(const T* x, int64_t sh, int64_t h) {
    const int64_t k = h % span;
    T* b = buf + k * s * plen;
    if (held[k] != h) {
      held[k] = h;
      // the rows a few windows down: the hardware prefetchers see one short stream per row
      // prefetch the row 4 below: measured ~20% faster at 32x64x112x112 (2 threads), where
      // the hardware prefetchers see one short stream per input row
      const T* ahead = x + (h + 4) * sh;
      for (int64_t i = 0; i < W; i += 64 / int64_t(sizeof(T))) __builtin_prefetch(ahead + i);
      fill(x + h * sh, b);
    }
    return b;
  }
  void fill(const T* src, T* b) {
    constexpr int L = lanes<T>();
    if constexpr (S == 1) {
      std::memcpy(b + joff, src, W * sizeof(T));
    } else if constexpr (S == 2) {
      T* e = b + joff;
      T* o = b + plen + joff;
      const int64_t pairs = W / 2;
      const auto seq = std::make_index_sequence<lanes<T>()>{};
      int64_t j = 0;
      if (pairs >= L) {
        for (;; j += L) {
          if (j > pairs - L) j = pairs - L;
          const V<T> a = vload(src + 2 * j), c = vload(src + 2 * j + L);
          vstore(e + j, even_lanes<T>(a, c, seq));
          vstore(o + j, odd_lanes<T>(a, c, seq));
          if (j == pairs - L) break;
        }
        j = pairs;
      }
      for (; j < pairs; ++j) e[j] = src[2 * j], o[j] = src[2 * j + 1];
      if (W & 1) e[pairs] = src[W - 1];
    } else {
      for (int64_t r = 0; r < s; ++r)
        for (int64_t j = 0, c = r; c < W; ++j, c += s) b[r * plen + joff + j] = src[c];
    }
  }
  // offset from a row's slot pointer to the load of tap column c0 (lane 0)
  int64_t offset(int64_t c0) const {
    const int64_t q = c0 >= 0 ? c0 / s : -((-c0 + s - 1) / s);
    return (c0 - q * s) * plen + joff + q;
  }
};

// G blocks of one output row: every tap of every lane is a plain load from the row ring;
// padding holds -inf, which never wins; each lane starts from -inf and its first in-range tap
// (id_init), which is torch's rule exactly, also for windows of -inf only.
template <typename T, bool IDX, int G>
inline void max_ring_blocks(const T* const* rows, int64_t n_rows, int kW, const int64_t* tap_off,
                            const I32<T>* id_init, const int32_t* row_flat, const int32_t* tap_flat,
                            V<T>* m_out, I32<T>* id_out) {
  V<T> m[G];
  I32<T> id[G];
  for (int g = 0; g < G; ++g) {
    m[g] = vbcast<T>(-std::numeric_limits<T>::infinity());
    id[g] = id_init[g];
  }
  for (int64_t k = 0; k < n_rows; ++k) {
    const T* row = rows[k];
    for (int kw = 0; kw < kW; ++kw) {
      const I32<T> off = ibcast<T>(row_flat[k] + tap_flat[kw]);
      for (int g = 0; g < G; ++g) {
        const V<T> v = vload(row + tap_off[g * kW + kw]);
        const Mask<T> take = (v > m[g]) | (v != v);
        m[g] = take ? v : m[g];
        if constexpr (IDX) id[g] = narrow_mask<T>(take) ? off : id[g];
      }
    }
  }
  for (int g = 0; g < G; ++g) {
    m_out[g] = m[g];
    if constexpr (IDX) id_out[g] = id[g];
  }
}

// NCHW: output rows [r0, r1) of the N*C*OH rows; S = the W stride when it is 1 or 2, else 0.
// Vector blocks of L outputs at 0, L, ... (the last one overlapping when OW >= L, one short block
// when OW < L), 4 blocks per pass over the taps.
template <typename T, int S, bool IDX, typename IX>
void max_rows_nchw(const Pool2dArgs<T>& a, int64_t r0, int64_t r1) {
  const PoolWindow& wn = a.win;
  constexpr int L = lanes<T>();
  const int64_t H = a.H, W = a.W, OW = a.OW, s = S ? S : wn.sW, sh = a.s_in[2];
  const int kW = wn.kW;
  // blocks and, per block and tap, the load offset within a ring row
  const int64_t n_blocks = OW >= L ? (OW + L - 1) / L : 1;
  int64_t* ow0 = scratch<int64_t>(3, n_blocks);
  for (int64_t b = 0; b < n_blocks; ++b) ow0[b] = OW >= L ? std::min(b * L, OW - L) : 0;
  const int64_t max_col = (std::max<int64_t>(OW, L) - 1) * s - wn.pW + int64_t(kW - 1) * wn.dW;
  RowRing<T, S> ring;
  ring.init(W, s, wn.pW, std::max<int64_t>(max_col, W), int64_t(wn.kH - 1) * wn.dH + 1,
            -std::numeric_limits<T>::infinity());
  int64_t* tap_off = scratch<int64_t>(5, n_blocks * kW);
  std::vector<I32<T>> id_init(n_blocks);
  std::vector<int32_t> tap_flat(kW), row_flat(wn.kH);
  const Axis* cols = axis_table(1, OW, W, kW, wn.sW, wn.pW, wn.dW);
  for (int kw = 0; kw < kW; ++kw) tap_flat[kw] = int32_t(int64_t(kw) * wn.dW);
  for (int k = 0; k < wn.kH; ++k) row_flat[k] = int32_t(int64_t(k) * wn.dH * W);
  for (int64_t b = 0; b < n_blocks; ++b) {
    const int64_t c0 = ow0[b] * s - wn.pW;
    for (int kw = 0; kw < kW; ++kw) tap_off[b * kW + kw] = ring.offset(c0 + tap_flat[kw]);
    for (int i = 0; i < L; ++i) {  // first in-range tap of each lane (torch's index of a -inf window)
      const int64_t ow = std::min(ow0[b] + i, OW - 1);
      id_init[b][i] = int32_t(cols[ow].first - (ow * s - wn.pW)) - (ow0[b] + i - ow) * int32_t(s);
    }
  }
  const Axis* rows_ax = axis_table(0, a.OH, H, wn.kH, wn.sH, wn.pH, wn.dH);
  const I32<T> lane_col = iota<T>() * int32_t(s);
  std::vector<const T*> rows(wn.kH);
  int64_t plane = -1;
  for_rows(r0, r1, a.C, a.OH, [&](int64_t n, int64_t c, int64_t oh) {
    const T* x = a.in + n * a.s_in[0] + c * a.s_in[1];
    T* o = a.out + n * a.s_out[0] + c * a.s_out[1] + oh * a.s_out[2];
    IX* ix = IDX ? static_cast<IX*>(a.idx) + n * a.s_idx[0] + c * a.s_idx[1] + oh * a.s_idx[2] : nullptr;
    const Axis& ah = rows_ax[oh];
    if (ah.count == 0) {
      for (int64_t ow = 0; ow < OW; ++ow) max_scalar<T, IDX, IX>(x, sh, 1, W, ah, cols[ow], o + ow, IDX ? ix + ow : nullptr);
      return;
    }
    if (n * a.C + c != plane) {
      plane = n * a.C + c;
      ring.reset();
    }
    for (int64_t k = 0; k < ah.count; ++k) rows[k] = ring.row(x, sh, ah.first + k * ah.step);
    const int64_t flat0 = ah.first * W;
    auto emit = [&](int64_t b, V<T> m, I32<T> id) {
      const int64_t c0 = ow0[b] * s - wn.pW;
      if (OW >= L) {
        vstore(o + ow0[b], m);
        if constexpr (IDX) store_idx<T, IX>(ix + ow0[b], id + ibcast<T>(int32_t(flat0 + c0)) + lane_col);
      } else {
        alignas(64) T mv[L];
        vstore(mv, m);
        std::memcpy(o, mv, OW * sizeof(T));
        if constexpr (IDX) {
          const I32<T> f = id + ibcast<T>(int32_t(flat0 + c0)) + lane_col;
          for (int64_t i = 0; i < OW; ++i) ix[i] = f[i];
        }
      }
    };
    V<T> m[4];
    I32<T> id[4];
    int64_t b = 0;
    for (; b + 4 <= n_blocks; b += 4) {
      max_ring_blocks<T, IDX, 4>(rows.data(), ah.count, kW, tap_off + b * kW, id_init.data() + b,
                                 row_flat.data(), tap_flat.data(), m, id);
      for (int g = 0; g < 4; ++g) emit(b + g, m[g], id[g]);
    }
    const int rest = int(n_blocks - b);
    if (rest == 3) max_ring_blocks<T, IDX, 3>(rows.data(), ah.count, kW, tap_off + b * kW, id_init.data() + b, row_flat.data(), tap_flat.data(), m, id);
    if (rest == 2) max_ring_blocks<T, IDX, 2>(rows.data(), ah.count, kW, tap_off + b * kW, id_init.data() + b, row_flat.data(), tap_flat.data(), m, id);
    if (rest == 1) max_ring_blocks<T, IDX, 1>(rows.data(), ah.count, kW, tap_off + b * kW, id_init.data() + b, row_flat.data(), tap_flat.data(), m, id);
    for (int g = 0; g < rest; ++g) emit(b + g, m[g], id[g]);
  });
}

// Small planes (OW shorter than a vector): vectors run along the flattened output plane
// (r = oh*OW + ow), and every tap is a masked gather through per-call tables: off[t][r] = the
// tap's element offset in the input plane (-1 outside the input: -inf, which never wins) and
// flat[t][r] = its h*W + w. Lanes start from -inf and their first in-range tap, as in
// max_ring_blocks. Planes [p0, p1); output rows contiguous (s_out[2] == OW).
struct SmallPlaneTables {
  int64_t P, Ppad, T;
  const int32_t *off, *flat, *first;
};

template <typename T>
SmallPlaneTables small_plane_tables(const Pool2dArgs<T>& a) {
  constexpr int L = lanes<T>();
  const PoolWindow& wn = a.win;
  const int64_t P = a.OH * a.OW, Ppad = (P + L - 1) / L * L + L, taps = int64_t(wn.kH) * wn.kW;
  int32_t* off = scratch<int32_t>(0, taps * Ppad);
  int32_t* flat = scratch<int32_t>(1, taps * Ppad);
  int32_t* first = scratch<int32_t>(2, Ppad);
  std::fill(off, off + taps * Ppad, -1);
  std::fill(flat, flat + taps * Ppad, 0);
  std::fill(first, first + Ppad, 0);
  for (int64_t oh = 0; oh < a.OH; ++oh) {
    const Axis ah = regular_axis(oh, a.H, wn.kH, wn.sH, wn.pH, wn.dH);
    for (int64_t ow = 0; ow < a.OW; ++ow) {
      const Axis aw = regular_axis(ow, a.W, wn.kW, wn.sW, wn.pW, wn.dW);
      const int64_t r = oh * a.OW + ow;
      first[r] = int32_t(ah.first * a.W + aw.first);
      for (int kh = 0; kh < wn.kH; ++kh)
        for (int kw = 0; kw < wn.kW; ++kw) {
          const int64_t h = oh * wn.sH - wn.pH + int64_t(kh) * wn.dH;
          const int64_t w = ow * wn.sW - wn.pW + int64_t(kw) * wn.dW;
          const int64_t t = int64_t(kh) * wn.kW + kw;
          if (h >= 0 && h < a.H && w >= 0 && w < a.W) {
            off[t * Ppad + r] = int32_t(h * a.s_in[2] + w * a.s_in[3]);
            flat[t * Ppad + r] = int32_t(h * a.W + w);
          }
        }
    }
  }
  return {P, Ppad, taps, off, flat, first};
}

template <typename T, bool IDX, typename IX>
void max_small_planes(const Pool2dArgs<T>& a, const SmallPlaneTables& tb, int64_t p0, int64_t p1) {
  constexpr int L = lanes<T>();
  const int64_t P = tb.P;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / a.C, c = p % a.C;
    const T* x = a.in + n * a.s_in[0] + c * a.s_in[1];
    T* o = a.out + n * a.s_out[0] + c * a.s_out[1];
    IX* ix = IDX ? static_cast<IX*>(a.idx) + n * a.s_idx[0] + c * a.s_idx[1] : nullptr;
    for (int64_t r0 = 0; r0 < P; r0 += L) {
      const int64_t r = P >= L ? std::min(r0, P - L) : 0;
      V<T> m = vbcast<T>(-std::numeric_limits<T>::infinity());
      I32<T> id;
      std::memcpy(&id, tb.first + r, sizeof id);
      for (int64_t t = 0; t < tb.T; ++t) {
        I32<T> off;
        std::memcpy(&off, tb.off + t * tb.Ppad + r, sizeof off);
        const V<T> v = gather<T>(x, off, __builtin_convertvector(off >= 0, Mask<T>),
                                 -std::numeric_limits<T>::infinity());
        const Mask<T> take = (v > m) | (v != v);
        m = take ? v : m;
        if constexpr (IDX) {
          I32<T> f;
          std::memcpy(&f, tb.flat + t * tb.Ppad + r, sizeof f);
          id = narrow_mask<T>(take) ? f : id;
        }
      }
      if (P >= L) {
        vstore(o + r, m);
        if constexpr (IDX) store_idx<T, IX>(ix + r, id);
      } else {
        alignas(64) T mv[L];
        vstore(mv, m);
        std::memcpy(o, mv, P * sizeof(T));
        if constexpr (IDX)
          for (int64_t i = 0; i < P; ++i) ix[i] = id[i];
      }
    }
  }
}

// Any strides (and adaptive windows on NCHW): the scalar rule per output.
template <typename T, bool IDX, typename IX>
void max_rows_strided(const Pool2dArgs<T>& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t p = r / a.OH, oh = r % a.OH, n = p / a.C, c = p % a.C;
    const T* x = a.in + n * a.s_in[0] + c * a.s_in[1];
    T* o = a.out + n * a.s_out[0] + c * a.s_out[1] + oh * a.s_out[2];
    IX* ix = IDX ? static_cast<IX*>(a.idx) + n * a.s_idx[0] + c * a.s_idx[1] + oh * a.s_idx[2] : nullptr;
    const Axis ah = axis_h(a.win, oh, a.H, a.OH);
    for (int64_t ow = 0; ow < a.OW; ++ow)
      max_scalar<T, IDX, IX>(x, a.s_in[2], a.s_in[3], a.W, ah, axis_w(a.win, ow, a.W, a.OW),
                         o + ow * a.s_out[3], IDX ? ix + ow * a.s_idx[3] : nullptr);
  }
}

// NHWC: U vectors of channels [c, c + U*L) of one output pixel; x is the image (n).
// n_store > 0 (U == 1): only the first n_store channels are stored (fewer than L channels).
template <typename T, bool IDX, typename IX, int U>
inline void max_pixel_block(const T* x, int64_t sh, int64_t sw, int64_t W, const Axis& ah,
                            const Axis& aw, int64_t c, T* o, IX* ix, int n_store = 0) {
  constexpr int L = lanes<T>();
  V<T> m[U];
  I32<T> id[U];
  const T* p0 = x + ah.first * sh + aw.first * sw + c;
  for (int u = 0; u < U; ++u) {
    m[u] = vload(p0 + u * L);
    id[u] = ibcast<T>(int32_t(ah.first * W + aw.first));
  }
  for (int64_t i = 0; i < ah.count; ++i) {
    const int64_t h = ah.first + i * ah.step;
    for (int64_t j = i == 0 ? 1 : 0; j < aw.count; ++j) {
      const int64_t w = aw.first + j * aw.step;
      const T* p = x + h * sh + w * sw + c;
      const I32<T> flat = ibcast<T>(int32_t(h * W + w));
      for (int u = 0; u < U; ++u) {
        const V<T> v = vload(p + u * L);
        const Mask<T> take = (v > m[u]) | (v != v);
        m[u] = take ? v : m[u];
        if constexpr (IDX) id[u] = narrow_mask<T>(take) ? flat : id[u];
      }
    }
  }
  if (n_store > 0) {
    alignas(64) T mv[L];
    vstore(mv, m[0]);
    std::memcpy(o + c, mv, n_store * sizeof(T));
    if constexpr (IDX)
      for (int i = 0; i < n_store; ++i) ix[c + i] = id[0][i];
    return;
  }
  for (int u = 0; u < U; ++u) {
    vstore(o + c + u * L, m[u]);
    if constexpr (IDX) store_idx<T, IX>(ix + c + u * L, id[u]);
  }
}

// Address of the last element of a 4-D view (non-negative strides): loads that run past a
// pixel's channels are safe while they stay at or below it.
template <typename P>
inline const P* last_element(const P* p, int64_t n0, int64_t n1, int64_t n2, int64_t n3, const int64_t* st) {
  return p + (n0 - 1) * st[0] + (n1 - 1) * st[1] + (n2 - 1) * st[2] + (n3 - 1) * st[3];
}

template <typename T, bool IDX, typename IX>
void max_pixels_nhwc(const Pool2dArgs<T>& a, int64_t q0, int64_t q1) {
  constexpr int L = lanes<T>();
  const int64_t C = a.C, sh = a.s_in[2], sw = a.s_in[3];
  const T* span_hi = last_element<T>(a.in, a.N, a.C, a.H, a.W, a.s_in);
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t n = q / (a.OH * a.OW), oh = q / a.OW % a.OH, ow = q % a.OW;
    const T* x = a.in + n * a.s_in[0];
    T* o = a.out + n * a.s_out[0] + oh * a.s_out[2] + ow * a.s_out[3];
    IX* ix = IDX ? static_cast<IX*>(a.idx) + n * a.s_idx[0] + oh * a.s_idx[2] + ow * a.s_idx[3] : nullptr;
    const Axis ah = axis_h(a.win, oh, a.H, a.OH), aw = axis_w(a.win, ow, a.W, a.OW);
    int64_t c = 0;
    if (ah.count > 0 && aw.count > 0) {
      if (C >= L) {
        for (; c + 4 * L <= C; c += 4 * L) max_pixel_block<T, IDX, IX, 4>(x, sh, sw, a.W, ah, aw, c, o, ix);
        for (; c + L <= C; c += L) max_pixel_block<T, IDX, IX, 1>(x, sh, sw, a.W, ah, aw, c, o, ix);
        if (c < C) max_pixel_block<T, IDX, IX, 1>(x, sh, sw, a.W, ah, aw, C - L, o, ix), c = C;  // overlaps
      } else if (x + (ah.first + (ah.count - 1) * ah.step) * sh + (aw.first + (aw.count - 1) * aw.step) * sw +
                     L - 1 <= span_hi) {  // fewer channels than lanes: loads run into the next pixel
        max_pixel_block<T, IDX, IX, 1>(x, sh, sw, a.W, ah, aw, 0, o, ix, int(C));
        c = C;
      }
    }
    for (; c < C; ++c) max_scalar<T, IDX, IX>(x + c, sh, sw, a.W, ah, aw, o + c, IDX ? ix + c : nullptr);
  }
}

template <typename T, bool IDX, typename IX>
void max_forward(const Pool2dArgs<T>& a) {
  prefer_huge_pages(a.out, a.N, a.C, a.OH, a.OW, a.s_out);
  if (IDX) prefer_huge_pages(static_cast<IX*>(a.idx), a.N, a.C, a.OH, a.OW, a.s_idx);
  const Layout lay = layout_of(a, IDX);
  const bool vec_idx = !IDX || small_plane(a.H, a.W);
  const int64_t elems = a.N * a.C * a.H * a.W;
  if (lay == Layout::NHWC && vec_idx) {
    run_chunks(a.N * a.OH * a.OW, elems, [&](int64_t q0, int64_t q1) { max_pixels_nhwc<T, IDX, IX>(a, q0, q1); });
    return;
  }
  const int64_t rows = a.N * a.C * a.OH;
  if (lay != Layout::NCHW || a.win.adaptive || !vec_idx) {
    run_chunks(rows, elems, [&](int64_t r0, int64_t r1) { max_rows_strided<T, IDX, IX>(a, r0, r1); });
    return;
  }
  const bool rows_contiguous = (a.OH <= 1 || a.s_out[2] == a.OW) && (!IDX || a.OH <= 1 || a.s_idx[2] == a.OW);
  if (a.OW < lanes<T>() && rows_contiguous && a.OH * a.OW * a.win.kH * a.win.kW <= (1 << 16) &&
      (a.H * a.s_in[2] + a.W) < (int64_t(1) << 30)) {
    const SmallPlaneTables tb = small_plane_tables(a);
    run_chunks(a.N * a.C, elems, [&](int64_t p0, int64_t p1) { max_small_planes<T, IDX, IX>(a, tb, p0, p1); });
    return;
  }
  run_chunks(rows, elems, [&](int64_t r0, int64_t r1) {
    if (a.win.sW == 1) max_rows_nchw<T, 1, IDX, IX>(a, r0, r1);
    else if (a.win.sW == 2) max_rows_nchw<T, 2, IDX, IX>(a, r0, r1);
    else max_rows_nchw<T, 0, IDX, IX>(a, r0, r1);
  });
}

// ================================ avg forward ================================================
template <typename T>
inline T window_sum(const T* x, int64_t sh, int64_t sw, const Axis& ah, const Axis& aw) {
  T sum = 0;
  for (int64_t i = 0; i < ah.count; ++i)
    for (int64_t j = 0; j < aw.count; ++j) sum += x[(ah.first + i * ah.step) * sh + (aw.first + j * aw.step) * sw];
  return sum;
}

// divisor of output (oh, ow) given its clipped axes
inline int64_t avg_divisor(const PoolWindow& w, int64_t oh, int64_t ow, int64_t H, int64_t W,
                           const Axis& ah, const Axis& aw) {
  if (w.adaptive) return ah.count * aw.count;
  if (w.divisor_override) return w.divisor_override;
  return avg_factor(oh, H, w.kH, w.sH, w.pH, w.count_include_pad, ah) *
         avg_factor(ow, W, w.kW, w.sW, w.pW, w.count_include_pad, aw);
}

// row buf[0, W) = sum of the rows of x listed by ah (unit column stride)
template <typename T>
inline void sum_rows(const T* x, int64_t sh, int64_t W, const Axis& ah, T* buf) {
  constexpr int L = lanes<T>();
  if (ah.count == 0) {
    std::memset(buf, 0, W * sizeof(T));
    return;
  }
  const T* x0 = x + ah.first * sh;
  const int64_t step = ah.step * sh;
  int64_t w = 0;
  for (; w + L <= W; w += L) {
    V<T> acc = vload(x0 + w);
    for (int64_t i = 1; i < ah.count; ++i) acc += vload(x0 + i * step + w);
    vstore(buf + w, acc);
  }
  for (; w < W; ++w) {
    T acc = x0[w];
    for (int64_t i = 1; i < ah.count; ++i) acc += x0[i * step + w];
    buf[w] = acc;
  }
}

// NCHW: output rows [r0, r1). The window's rows are summed into a row buffer with pW zeros on
// the left and zeros past W, then the kW taps of every output are sload<S>s of that buffer.
template <typename T, int S>
void avg_rows_nchw(const Pool2dArgs<T>& a, int64_t r0, int64_t r1) {
  const PoolWindow& wn = a.win;
  constexpr int L = lanes<T>();
  const int64_t H = a.H, W = a.W, OW = a.OW, s = S ? S : wn.sW;
  const int64_t padl = wn.pW;
  const int64_t len = padl + std::max<int64_t>(W, (std::max<int64_t>(OW, L) - 1) * s + wn.kW + 1) + 2 * L;
  T* buf = scratch<T>(0, len);
  std::fill(buf, buf + padl, T(0));
  std::fill(buf + padl + W, buf + len, T(0));
  T* fw = scratch<T>(1, std::max<int64_t>(OW, L));  // column divisor factors (1 past OW)
  std::fill(fw, fw + std::max<int64_t>(OW, L), T(1));
  for (int64_t ow = 0; ow < OW; ++ow) {
    const Axis aw = regular_axis(ow, W, wn.kW, wn.sW, wn.pW, 1);
    fw[ow] = T(avg_factor(ow, W, wn.kW, wn.sW, wn.pW, wn.count_include_pad, aw));
  }
  const Axis* rows = axis_table(2, a.OH, H, wn.kH, wn.sH, wn.pH, 1);
  const T* row = buf + padl - wn.pW;  // row[ow*s + kw] = tap kw of output ow
  const V<T> vov = vbcast<T>(T(wn.divisor_override));
  for_rows(r0, r1, a.C, a.OH, [&](int64_t n, int64_t c, int64_t oh) {
    const T* x = a.in + n * a.s_in[0] + c * a.s_in[1];
    T* o = a.out + n * a.s_out[0] + c * a.s_out[1] + oh * a.s_out[2];
    const Axis& ah = rows[oh];
    const T fh = T(avg_factor(oh, H, wn.kH, wn.sH, wn.pH, wn.count_include_pad, ah));
    const V<T> vfh = vbcast<T>(fh);
    sum_rows(x, a.s_in[2], W, ah, buf + padl);
    auto block = [&](int64_t ow0) {
      const T* t0 = row + ow0 * s;
      V<T> sum = sload<T, S>(t0, s);
      for (int kw = 1; kw < wn.kW; ++kw) sum += sload<T, S>(t0 + kw, s);
      return sum / (wn.divisor_override ? vov : vfh * vload(fw + ow0));
    };
    if (OW >= L) {
      for (int64_t ow0 = 0;; ow0 += L) {
        if (ow0 > OW - L) ow0 = OW - L;  // last block overlaps the previous one
        vstore(o + ow0, block(ow0));
        if (ow0 == OW - L) break;
      }
    } else {  // one short block (the buffer and fw are long enough for L lanes)
      alignas(64) T tmp[L];
      vstore(tmp, block(0));
      std::memcpy(o, tmp, OW * sizeof(T));
    }
  });
}

// NCHW adaptive: rows summed into a buffer, then each output sums its columns.
template <typename T>
void adaptive_avg_rows_nchw(const Pool2dArgs<T>& a, int64_t r0, int64_t r1) {
  T* buf = scratch<T>(0, a.W);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t p = r / a.OH, oh = r % a.OH, n = p / a.C, c = p % a.C;
    const T* x = a.in + n * a.s_in[0] + c * a.s_in[1];
    T* o = a.out + n * a.s_out[0] + c * a.s_out[1] + oh * a.s_out[2];
    const Axis ah = adaptive_axis(oh, a.H, a.OH);
    sum_rows(x, a.s_in[2], a.W, ah, buf);
    for (int64_t ow = 0; ow < a.OW; ++ow) {
      const Axis aw = adaptive_axis(ow, a.W, a.OW);
      T sum = 0;
      for (int64_t j = 0; j < aw.count; ++j) sum += buf[aw.first + j];
      o[ow] = sum / T(ah.count * aw.count);
    }
  }
}

template <typename T>
void avg_rows_strided(const Pool2dArgs<T>& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t p = r / a.OH, oh = r % a.OH, n = p / a.C, c = p % a.C;
    const T* x = a.in + n * a.s_in[0] + c * a.s_in[1];
    T* o = a.out + n * a.s_out[0] + c * a.s_out[1] + oh * a.s_out[2];
    const Axis ah = axis_h(a.win, oh, a.H, a.OH);
    for (int64_t ow = 0; ow < a.OW; ++ow) {
      const Axis aw = axis_w(a.win, ow, a.W, a.OW);
      const T sum = window_sum(x, a.s_in[2], a.s_in[3], ah, aw);
      o[ow * a.s_out[3]] = ah.count && aw.count ? sum / T(avg_divisor(a.win, oh, ow, a.H, a.W, ah, aw)) : T(0);
    }
  }
}

template <typename T, int U>
inline void avg_pixel_block(const T* x, int64_t sh, int64_t sw, const Axis& ah, const Axis& aw,
                            int64_t c, V<T> div, T* o, int n_store = 0) {
  constexpr int L = lanes<T>();
  V<T> acc[U];
  for (int u = 0; u < U; ++u) acc[u] = V<T>{};
  for (int64_t i = 0; i < ah.count; ++i)
    for (int64_t j = 0; j < aw.count; ++j) {
      const T* p = x + (ah.first + i * ah.step) * sh + (aw.first + j * aw.step) * sw + c;
      for (int u = 0; u < U; ++u) acc[u] += vload(p + u * L);
    }
  if (n_store > 0) {
    alignas(64) T mv[L];
    vstore(mv, acc[0] / div);
    std::memcpy(o + c, mv, n_store * sizeof(T));
    return;
  }
  for (int u = 0; u < U; ++u) vstore(o + c + u * L, acc[u] / div);
}

template <typename T>
void avg_pixels_nhwc(const Pool2dArgs<T>& a, int64_t q0, int64_t q1) {
  constexpr int L = lanes<T>();
  const int64_t C = a.C, sh = a.s_in[2], sw = a.s_in[3];
  const T* span_hi = last_element<T>(a.in, a.N, a.C, a.H, a.W, a.s_in);
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t n = q / (a.OH * a.OW), oh = q / a.OW % a.OH, ow = q % a.OW;
    const T* x = a.in + n * a.s_in[0];
    T* o = a.out + n * a.s_out[0] + oh * a.s_out[2] + ow * a.s_out[3];
    const Axis ah = axis_h(a.win, oh, a.H, a.OH), aw = axis_w(a.win, ow, a.W, a.OW);
    if (ah.count == 0 || aw.count == 0) {
      std::fill(o, o + C, T(0));
      continue;
    }
    const T div = T(avg_divisor(a.win, oh, ow, a.H, a.W, ah, aw));
    const V<T> vdiv = vbcast<T>(div);
    int64_t c = 0;
    if (C >= L) {
      for (; c + 4 * L <= C; c += 4 * L) avg_pixel_block<T, 4>(x, sh, sw, ah, aw, c, vdiv, o);
      for (; c + L <= C; c += L) avg_pixel_block<T, 1>(x, sh, sw, ah, aw, c, vdiv, o);
      if (c < C) avg_pixel_block<T, 1>(x, sh, sw, ah, aw, C - L, vdiv, o), c = C;  // overlaps
    } else if (x + (ah.first + (ah.count - 1) * ah.step) * sh + (aw.first + (aw.count - 1) * aw.step) * sw +
                   L - 1 <= span_hi) {  // fewer channels than lanes: loads run into the next pixel
      avg_pixel_block<T, 1>(x, sh, sw, ah, aw, 0, vdiv, o, int(C));
      c = C;
    }
    for (; c < C; ++c) o[c] = window_sum(x + c, sh, sw, ah, aw) / div;
  }
}

template <typename T>
void avg_forward(const Pool2dArgs<T>& a) {
  prefer_huge_pages(a.out, a.N, a.C, a.OH, a.OW, a.s_out);
  const Layout lay = layout_of(a, false);
  const int64_t elems = a.N * a.C * a.H * a.W, rows = a.N * a.C * a.OH;
  if (lay == Layout::NHWC) {
    run_chunks(a.N * a.OH * a.OW, elems, [&](int64_t q0, int64_t q1) { avg_pixels_nhwc<T>(a, q0, q1); });
  } else if (lay == Layout::Strided) {
    run_chunks(rows, elems, [&](int64_t r0, int64_t r1) { avg_rows_strided<T>(a, r0, r1); });
  } else if (a.win.adaptive) {
    run_chunks(rows, elems, [&](int64_t r0, int64_t r1) { adaptive_avg_rows_nchw<T>(a, r0, r1); });
  } else {
    run_chunks(rows, elems, [&](int64_t r0, int64_t r1) {
      if (a.win.sW == 1) avg_rows_nchw<T, 1>(a, r0, r1);
      else if (a.win.sW == 2) avg_rows_nchw<T, 2>(a, r0, r1);
      else avg_rows_nchw<T, 0>(a, r0, r1);
    });
  }
}

// ================================ max backward ===============================================
// grad_in planes [p0, p1) of the N*C planes (p = n*C + c) zeroed, then the grad_out of those
// planes added at their indices. Only grad_in rows [h0, h1) are touched (a band of the plane when
// N*C is too small to give every thread whole planes).
template <typename T, typename IX>
void max_backward_planes(const Pool2dArgs<T>& a, int64_t p0, int64_t p1, int64_t h0, int64_t h1) {
  const int64_t H = a.H, W = a.W, C = a.C;
  const int64_t sh = a.s_in[2], sw = a.s_in[3];
  const bool flat = sh == W * sw;  // element (h, w) at idx * sw
  const int64_t lo = h0 * W, hi = h1 * W;
  auto addr = [&](int64_t id) { return flat ? id * sw : id / W * sh + id % W * sw; };
  const bool nhwc = a.s_in[1] == 1 && C > 1 && flat;
  if (nhwc && h0 == 0 && h1 == H) {
    // channels_last: pixels outer, this task's channels inner (cache-friendly, still race-free)
    for (int64_t p = p0; p < p1;) {
      const int64_t n = p / C, c0 = p % C, c1 = std::min(C, c0 + (p1 - p));
      T* gi = a.in + n * a.s_in[0];
      for (int64_t hw = 0; hw < H * W; ++hw) std::fill(gi + hw * sw + c0, gi + hw * sw + c1, T(0));
      for (int64_t oh = 0; oh < a.OH; ++oh)
        for (int64_t ow = 0; ow < a.OW; ++ow) {
          const T* g = a.out + n * a.s_out[0] + oh * a.s_out[2] + ow * a.s_out[3];
          const IX* ix = static_cast<const IX*>(a.idx) + n * a.s_idx[0] + oh * a.s_idx[2] + ow * a.s_idx[3];
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t id = ix[c * a.s_idx[1]];
            if (id >= 0 && id < H * W) gi[id * sw + c] += g[c * a.s_out[1]];
          }
        }
      p += c1 - c0;
    }
    return;
  }
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / C, c = p % C;
    T* gi = a.in + n * a.s_in[0] + c * a.s_in[1];
    if (sw == 1 && (sh == W || h1 - h0 == 1)) {
      std::memset(gi + h0 * sh, 0, (h1 - h0) * W * sizeof(T));
    } else {
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = 0; w < W; ++w) gi[h * sh + w * sw] = T(0);
    }
    const T* g = a.out + n * a.s_out[0] + c * a.s_out[1];
    const IX* ix = static_cast<const IX*>(a.idx) + n * a.s_idx[0] + c * a.s_idx[1];
    for (int64_t oh = 0; oh < a.OH; ++oh) {
      const T* grow = g + oh * a.s_out[2];
      const IX* irow = ix + oh * a.s_idx[2];
      for (int64_t ow = 0; ow < a.OW; ++ow) {
        const int64_t id = irow[ow * a.s_idx[3]];
        if (id >= lo && id < hi) gi[addr(id)] += grow[ow * a.s_out[3]];
      }
    }
  }
}

template <typename T, typename IX>
void max_backward(const Pool2dArgs<T>& a) {
  prefer_huge_pages(a.in, a.N, a.C, a.H, a.W, a.s_in);
  const int64_t planes = a.N * a.C, threads = num_threads();
  const int64_t elems = planes * a.H * a.W;
  if (planes >= 2 * threads || a.H < 2 || elems < kSerialElems) {
    run_chunks(planes, elems, [&](int64_t p0, int64_t p1) { max_backward_planes<T, IX>(a, p0, p1, 0, a.H); });
    return;
  }
  // few planes: each task owns a band of rows of one plane and scans that plane's whole grad_out
  const int64_t bands = std::min<int64_t>(a.H, (2 * threads + planes - 1) / planes);
  parallel_for(planes * bands, [&](int64_t t, int) {
    const int64_t p = t / bands, b = t % bands;
    max_backward_planes<T, IX>(a, p, p + 1, a.H * b / bands, a.H * (b + 1) / bands);
  });
}

// ================================ avg backward ===============================================
// Along one axis, the outputs whose window covers input position h: for a regular window
// o = q - t (q = (h + p) / s, t = 0, 1, ...) while (h + p) % s + t*s < k and 0 <= o < O;
// adaptive: o in [floor(h*O/size), floor(((h+1)*O - 1)/size)].
struct Cover {
  int64_t first, last;  // o in [first, last], every one of them covering
};
inline Cover cover(const PoolWindow& w, bool h_axis, int64_t h, int64_t size, int64_t n_out) {
  if (w.adaptive) return {h * n_out / size, std::min(n_out - 1, ((h + 1) * n_out - 1) / size)};
  const int k = h_axis ? w.kH : w.kW, s = h_axis ? w.sH : w.sW, p = h_axis ? w.pH : w.pW;
  const int64_t q = (h + p) / s, r = (h + p) % s;
  const int64_t t_max = (k - 1 - r) / s;  // r + t*s < k; r < s <= k... or none when r >= k
  if (r >= k) return {0, -1};
  return {std::max<int64_t>(0, q - t_max), std::min(n_out - 1, q)};
}

// 1 / divisor factor per output along one axis (the divisor is their product; with
// divisor_override the H factor carries it and the W factor is 1)
template <typename T>
void inverse_factors(const PoolWindow& w, bool h_axis, int64_t size, int64_t n_out, T* out) {
  for (int64_t o = 0; o < n_out; ++o) {
    if (w.adaptive) {
      out[o] = T(1) / T(adaptive_axis(o, size, n_out).count);
    } else if (w.divisor_override) {
      out[o] = h_axis ? T(1) / T(w.divisor_override) : T(1);
    } else {
      const int k = h_axis ? w.kH : w.kW, s = h_axis ? w.sH : w.sW, p = h_axis ? w.pH : w.pW;
      out[o] = T(1) / T(avg_factor(o, size, k, s, p, w.count_include_pad, regular_axis(o, size, k, s, p, 1)));
    }
  }
}

// NCHW: grad_in rows [r0, r1) of the N*C*H rows. buf[padl + ow] = sum over the covering output
// rows of grad_out * rh (then * rw); grad_in[w] = sum over covering ow of buf, with the buffer
// zero-padded so that out-of-range ow read zeros. S = the W stride (1, 2) or 0 (scalar).
template <typename T, int S>
void avg_backward_rows_nchw(const Pool2dArgs<T>& a, int64_t r0, int64_t r1) {
  const PoolWindow& wn = a.win;
  constexpr int L = lanes<T>();
  const int64_t H = a.H, W = a.W, OH = a.OH, OW = a.OW;
  const int64_t kW = wn.adaptive ? 1 : wn.kW, sW = wn.adaptive ? 1 : wn.sW, pW = wn.adaptive ? 0 : wn.pW;
  const int64_t padl = kW + 1;
  const int64_t len = padl + std::max<int64_t>(OW, (W + pW) / sW + 1) + 2 * L + 1;
  T* buf = scratch<T>(0, len);
  std::fill(buf, buf + len, T(0));
  T* rh = scratch<T>(1, OH), *rw = scratch<T>(2, OW + L);
  inverse_factors(wn, true, H, OH, rh);
  inverse_factors(wn, false, W, OW, rw);
  int64_t* jr = nullptr;  // adaptive: covering output columns of every w
  if (wn.adaptive) {
    jr = scratch<int64_t>(3, 2 * W);
    for (int64_t w = 0; w < W; ++w) {
      const Cover cv = cover(wn, false, w, W, OW);
      jr[2 * w] = cv.first;
      jr[2 * w + 1] = cv.last;
    }
  }
  T* acc = buf + padl;
  // vector blocks of grad_in columns start where (w + pW) % S == 0
  const int64_t wv0 = S ? (S - pW % S) % S : 0;
  Mask<T> tap_mask[8] = {};  // S == 2: lanes (i % 2) + 2t < kW
  if constexpr (S == 2) {
    for (int t = 0; t < 8; ++t)
      for (int i = 0; i < L; ++i) tap_mask[t][i] = (i % 2) + 2 * t < kW ? -1 : 0;
  }
  const int64_t n_taps = S ? (kW + S - 1) / S : 0;
  const bool vec = S != 0 && !wn.adaptive && W - wv0 >= L && n_taps <= 8;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t p = r / H, h = r % H, n = p / a.C, c = p % a.C;
    T* gi = a.in + n * a.s_in[0] + c * a.s_in[1] + h * a.s_in[2];
    const T* g = a.out + n * a.s_out[0] + c * a.s_out[1];
    const Cover ch = cover(wn, true, h, H, OH);
    if (ch.first > ch.last) {
      std::memset(gi, 0, W * sizeof(T));
      continue;
    }
    // acc[ow] = rw[ow] * sum_oh rh[oh] * g[oh, ow]
    {
      const T* g0 = g + ch.first * a.s_out[2];
      int64_t ow = 0;
      for (; ow + L <= OW; ow += L) {
        V<T> s = vload(g0 + ow) * vbcast<T>(rh[ch.first]);
        for (int64_t oh = ch.first + 1; oh <= ch.last; ++oh)
          s += vload(g + oh * a.s_out[2] + ow) * vbcast<T>(rh[oh]);
        vstore(acc + ow, s * vload(rw + ow));
      }
      for (; ow < OW; ++ow) {
        T s = g0[ow] * rh[ch.first];
        for (int64_t oh = ch.first + 1; oh <= ch.last; ++oh) s += g[oh * a.s_out[2] + ow] * rh[oh];
        acc[ow] = s * rw[ow];
      }
    }
    auto scalar = [&](int64_t w) {
      T s = 0;
      if (jr) {
        for (int64_t j = jr[2 * w]; j <= jr[2 * w + 1]; ++j) s += acc[j];
      } else {
        const int64_t q = (w + pW) / sW, rr = (w + pW) % sW;
        for (int64_t t = 0; rr + t * sW < kW; ++t) s += acc[q - t];  // q - t >= -kW: zero padding
      }
      gi[w] = s;
    };
    if (!vec) {
      for (int64_t w = 0; w < W; ++w) scalar(w);
      continue;
    }
    for (int64_t w = 0; w < wv0; ++w) scalar(w);
    // last block start: <= W - L and congruent to wv0 modulo S
    const int64_t wl = W - L - (W - L - wv0) % (S ? S : 1);
    for (int64_t w0 = wv0;; w0 += L) {
      if (w0 > wl) w0 = wl;
      const T* base = acc + (w0 + pW) / (S ? S : 1);
      V<T> s{};
      if constexpr (S == 1) {
        s = vload(base);
        for (int64_t t = 1; t < kW; ++t) s += vload(base - t);
      } else if constexpr (S == 2) {
        const auto seq = std::make_index_sequence<lanes<T>()>{};
        s = dup_lanes<T>(vload(base), seq);
        for (int64_t t = 1; t < n_taps; ++t) s += tap_mask[t] ? dup_lanes<T>(vload(base - t), seq) : V<T>{};
        if (kW < 2) s = tap_mask[0] ? s : V<T>{};  // kW == 1, stride 2: odd columns get nothing
      }
      vstore(gi + w0, s);
      if (w0 == wl) break;
    }
    for (int64_t w = wl + L; w < W; ++w) scalar(w);
  }
}

// channels_last (and any strides, with a scalar channel loop): grad_in pixels [q0, q1).
template <typename T>
void avg_backward_pixels(const Pool2dArgs<T>& a, int64_t q0, int64_t q1, bool nhwc) {
  constexpr int L = lanes<T>();
  const PoolWindow& wn = a.win;
  const int64_t C = a.C;
  T* rh = scratch<T>(1, a.OH), *rw = scratch<T>(2, a.OW);
  inverse_factors(wn, true, a.H, a.OH, rh);
  inverse_factors(wn, false, a.W, a.OW, rw);
  const T* g_hi = last_element<T>(a.out, a.N, a.C, a.OH, a.OW, a.s_out);
  for (int64_t q = q0; q < q1; ++q) {
    const int64_t n = q / (a.H * a.W), h = q / a.W % a.H, w = q % a.W;
    T* gi = a.in + n * a.s_in[0] + h * a.s_in[2] + w * a.s_in[3];
    const T* g = a.out + n * a.s_out[0];
    const Cover ch = cover(wn, true, h, a.H, a.OH), cw = cover(wn, false, w, a.W, a.OW);
    int64_t c = 0;
    auto block = [&](int64_t c0, int n_store) {  // grad_in[c0, c0 + L) (first n_store if > 0)
      V<T> s0{};
      for (int64_t oh = ch.first; oh <= ch.last; ++oh)
        for (int64_t ow = cw.first; ow <= cw.last; ++ow)
          s0 += vload(g + oh * a.s_out[2] + ow * a.s_out[3] + c0) * vbcast<T>(rh[oh] * rw[ow]);
      if (n_store == 0) {
        vstore(gi + c0, s0);
      } else {
        alignas(64) T tmp[L];
        vstore(tmp, s0);
        std::memcpy(gi + c0, tmp, n_store * sizeof(T));
      }
    };
    if (nhwc && C >= L) {
      for (; c + 2 * L <= C; c += 2 * L) {
        V<T> s0{}, s1{};
        for (int64_t oh = ch.first; oh <= ch.last; ++oh)
          for (int64_t ow = cw.first; ow <= cw.last; ++ow) {
            const T* gp = g + oh * a.s_out[2] + ow * a.s_out[3] + c;
            const V<T> f = vbcast<T>(rh[oh] * rw[ow]);
            s0 += vload(gp) * f;
            s1 += vload(gp + L) * f;
          }
        vstore(gi + c, s0);
        vstore(gi + c + L, s1);
      }
      for (; c + L <= C; c += L) block(c, 0);
      if (c < C) block(C - L, 0), c = C;  // overlaps
    } else if (nhwc && ch.first <= ch.last && cw.first <= cw.last &&
               g + ch.last * a.s_out[2] + cw.last * a.s_out[3] + L - 1 <= g_hi) {
      block(0, int(C));  // fewer channels than lanes: loads run into the next pixel
      c = C;
    }
    for (; c < C; ++c) {
      T s = 0;
      for (int64_t oh = ch.first; oh <= ch.last; ++oh)
        for (int64_t ow = cw.first; ow <= cw.last; ++ow)
          s += g[oh * a.s_out[2] + ow * a.s_out[3] + c * a.s_out[1]] * (rh[oh] * rw[ow]);
      gi[c * a.s_in[1]] = s;
    }
  }
}

template <typename T>
void avg_backward(const Pool2dArgs<T>& a) {
  prefer_huge_pages(a.in, a.N, a.C, a.H, a.W, a.s_in);
  const Layout lay = layout_of(a, false);
  const int64_t elems = a.N * a.C * a.H * a.W;
  if (lay == Layout::NCHW) {
    run_chunks(a.N * a.C * a.H, elems, [&](int64_t r0, int64_t r1) {
      if (!a.win.adaptive && a.win.sW == 1) avg_backward_rows_nchw<T, 1>(a, r0, r1);
      else if (!a.win.adaptive && a.win.sW == 2) avg_backward_rows_nchw<T, 2>(a, r0, r1);
      else avg_backward_rows_nchw<T, 0>(a, r0, r1);
    });
  } else {
    const bool nhwc = lay == Layout::NHWC;
    run_chunks(a.N * a.H * a.W, elems, [&](int64_t q0, int64_t q1) { avg_backward_pixels<T>(a, q0, q1, nhwc); });
  }
}

template <typename T>
void max_forward_entry(const Pool2dArgs<T>& a) {
  if (!a.idx) max_forward<T, false, int64_t>(a);
  else if (a.idx32) max_forward<T, true, int32_t>(a);
  else max_forward<T, true, int64_t>(a);
}
template <typename T>
void max_backward_entry(const Pool2dArgs<T>& a) {
  if (a.idx32) max_backward<T, int32_t>(a);
  else max_backward<T, int64_t>(a);
}

}  // namespace

void max_pool2d_forward(const Pool2dArgs<float>& a) { max_forward_entry(a); }
void max_pool2d_forward(const Pool2dArgs<double>& a) { max_forward_entry(a); }
void max_pool2d_backward(const Pool2dArgs<float>& a) { max_backward_entry(a); }
void max_pool2d_backward(const Pool2dArgs<double>& a) { max_backward_entry(a); }
void avg_pool2d_forward(const Pool2dArgs<float>& a) { avg_forward(a); }
void avg_pool2d_forward(const Pool2dArgs<double>& a) { avg_forward(a); }
void avg_pool2d_backward(const Pool2dArgs<float>& a) { avg_backward(a); }
void avg_pool2d_backward(const Pool2dArgs<double>& a) { avg_backward(a); }

}  // namespace PK_NS
}  // namespace pk
