// vmath.h — lane-wise math on the SIMD vectors of isa.h: exp2, sigmoid, tanh, min/max, and
// partial loads/stores for the tail of a row. Shared by attention.cpp and rnn.cpp; included
// inside namespace pk::PK_NS::{anonymous} by files compiled once per ISA.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "isa.h"

namespace pk {
namespace PK_NS {
namespace {

constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;

template <typename T> constexpr T neg_inf() { return -std::numeric_limits<T>::infinity(); }
template <typename T> constexpr T pos_inf() { return std::numeric_limits<T>::infinity(); }

// ---- vector exp2 ---------------------------------------------------------------------------
template <typename T> struct Bits;
template <> struct Bits<float> {
  typedef int32_t I __attribute__((vector_size(PK_VBYTES)));
  static constexpr int kMant = 23, kDegree = 7;
  static constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: x + magic rounds x to an integer
  static constexpr float kFlush = -125.0f;      // 2^x below this is flushed to 0
};
template <> struct Bits<double> {
  typedef int64_t I __attribute__((vector_size(PK_VBYTES)));
  static constexpr int kMant = 52, kDegree = 13;
  static constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double kFlush = -1021.0;
};
template <typename T> using IV = typename Bits<T>::I;

// Taylor coefficients of 2^f = e^(f ln 2), c_k = ln2^k / k!: on |f| <= 1/2 the first omitted
// term is below one ulp (degree 7 for float, 13 for double).
template <typename T>
struct Exp2Coef {
  T c[Bits<T>::kDegree + 1];
  constexpr Exp2Coef() : c() {
    double t = 1;
    for (int k = 0; k <= Bits<T>::kDegree; ++k) {
      c[k] = static_cast<T>(t);
      t = t * kLn2 / (k + 1);
    }
  }
};

// 2^x lane-wise: x = n + f with n an integer and |f| <= 1/2; 2^f by polynomial, 2^n added to
// the exponent bits. -inf and anything below the flush threshold give exactly 0 (a masked
// score must contribute nothing); NaN stays NaN; above 126 the result saturates at 2^126
// (sigmoid of a very negative number then comes out ~1e-38 instead of smaller: harmless).
template <typename T>
inline V<T> vexp2(V<T> x) {
  using B = Bits<T>;
  static constexpr Exp2Coef<T> k;
  const V<T> lo = vbcast<T>(T(B::kFlush) - 2), hi = vbcast<T>(T(126));
  const V<T> magic = vbcast<T>(B::kMagic);
  V<T> xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const V<T> t = xc + magic;
  const V<T> f = xc - (t - magic);
  V<T> p = vbcast<T>(k.c[B::kDegree]);
#pragma GCC unroll 16
  for (int d = B::kDegree - 1; d >= 0; --d) p = p * f + k.c[d];
  const IV<T> n = (IV<T>)t - (IV<T>)magic;
  const V<T> r = (V<T>)((IV<T>)p + (n << B::kMant));
  return x < T(B::kFlush) ? V<T>{} : r;
}

template <typename VT> inline VT vmax(VT a, VT b) { return a > b ? a : b; }
template <typename VT> inline VT vmin(VT a, VT b) { return a > b ? b : a; }  // a NaN in a stays

// 1 / d lane-wise. AVX-512 float: the 14-bit reciprocal estimate and one Newton step (~1 ulp,
// a third of the cost of vdivps); elsewhere a division.
template <typename T> inline V<T> vrecip(V<T> d) { return T(1) / d; }
#if defined(PK_ISA_AVX512)
template <> inline V<float> vrecip<float>(V<float> d) {
  const V<float> r = (V<float>)_mm512_maskz_rcp14_ps(__mmask16(0xFFFF), (__m512)d);
  return r * (2.0f - d * r);
}
#endif

// sigmoid(x) = 1 / (1 + 2^(-x log2 e)). Float: lane-wise from vexp2 (a few ulp); double: the
// scalar library function per lane (the float64 path is for checking, not speed).
template <typename T> inline V<T> vsigmoid(V<T> x);
template <> inline V<float> vsigmoid<float>(V<float> x) {
  return vrecip<float>(1.0f + vexp2<float>(x * static_cast<float>(-kLog2e)));
}
template <> inline V<double> vsigmoid<double>(V<double> x) {
  for (int l = 0; l < lanes<double>(); ++l) x[l] = 1.0 / (1.0 + std::exp(-x[l]));
  return x;
}

// tanh(x): for |x| >= 0.3, sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) (cancellation costs at
// most ~2 ulp there); below, the odd Taylor series to x^13 (first omitted term < 1e-10 relative),
// which avoids the cancellation of 1 - e near 0.
template <typename T> inline V<T> vtanh(V<T> x);
template <> inline V<float> vtanh<float>(V<float> x) {
  const V<float> ax = x < 0.0f ? -x : x;
  const V<float> e = vexp2<float>(ax * static_cast<float>(-2.0 * kLog2e));
  V<float> big = (1.0f - e) * vrecip<float>(1.0f + e);
  big = x < 0.0f ? -big : big;
  const V<float> x2 = x * x;
  V<float> p = vbcast(21844.0f / 6081075.0f);
  p = p * x2 - 1382.0f / 155925.0f;
  p = p * x2 + 62.0f / 2835.0f;
  p = p * x2 - 17.0f / 315.0f;
  p = p * x2 + 2.0f / 15.0f;
  p = p * x2 - 1.0f / 3.0f;
  const V<float> small = x + x * x2 * p;
  return ax < 0.3f ? small : big;
}
template <> inline V<double> vtanh<double>(V<double> x) {
  for (int l = 0; l < lanes<double>(); ++l) x[l] = std::tanh(x[l]);
  return x;
}

// The first n (<= lanes) values at p as a vector (the rest 0), and the inverse. A whole vector
// is one load/store; only a row's ragged tail goes element by element.
template <typename T> inline V<T> vload_n(const T* p, int64_t n) {
  if (__builtin_expect(n == lanes<T>(), 1)) return vload(p);
  V<T> v{};
  for (int64_t l = 0; l < n; ++l) v[l] = p[l];
  return v;
}
template <typename T> inline void vstore_n(T* p, V<T> v, int64_t n) {
  if (__builtin_expect(n == lanes<T>(), 1)) return vstore(p, v);
  for (int64_t l = 0; l < n; ++l) p[l] = v[l];
}

}  // namespace
}  // namespace PK_NS
}  // namespace pk
