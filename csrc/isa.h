// Per-ISA compilation settings: included by every kernel file that is compiled once per ISA.
// CMake defines exactly one of PK_ISA_AVX512 / PK_ISA_AVX2 / PK_ISA_GENERIC and the matching
// -m flags; the vector width below follows from it. GCC/Clang vector extensions give one
// source for all three (16/8/4 floats per register).
#pragma once

#include <cstring>

#if defined(PK_ISA_AVX512)
#define PK_NS avx512
#define PK_VBYTES 64
#elif defined(PK_ISA_AVX2)
#define PK_NS avx2
#define PK_VBYTES 32
#else
#define PK_NS generic
#define PK_VBYTES 16
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PK_PAUSE() _mm_pause()
#else
#define PK_PAUSE() ((void)0)
#endif

namespace pk {
namespace PK_NS {

template <typename T> struct Vec;
template <> struct Vec<float> { typedef float type __attribute__((vector_size(PK_VBYTES))); };
template <> struct Vec<double> { typedef double type __attribute__((vector_size(PK_VBYTES))); };

template <typename T> using V = typename Vec<T>::type;
template <typename T> constexpr int lanes() { return PK_VBYTES / sizeof(T); }

template <typename T> static inline V<T> vload(const T* p) { V<T> v; std::memcpy(&v, p, sizeof v); return v; }
template <typename T> static inline void vstore(T* p, V<T> v) { std::memcpy(p, &v, sizeof v); }
// Broadcast through the ISA's own intrinsic so that a loaded scalar becomes one
// vbroadcastss/vbroadcastsd from memory (`V{} + s` costs an extra add on the FP pipes).
template <typename T> static inline V<T> vbcast(T s);
#if defined(PK_ISA_AVX512)
template <> inline V<float> vbcast<float>(float s) { return (V<float>)_mm512_set1_ps(s); }
template <> inline V<double> vbcast<double>(double s) { return (V<double>)_mm512_set1_pd(s); }
#elif defined(PK_ISA_AVX2)
template <> inline V<float> vbcast<float>(float s) { return (V<float>)_mm256_set1_ps(s); }
template <> inline V<double> vbcast<double>(double s) { return (V<double>)_mm256_set1_pd(s); }
#else
template <> inline V<float> vbcast<float>(float s) { return V<float>{s, s, s, s}; }
template <> inline V<double> vbcast<double>(double s) { return V<double>{s, s}; }
#endif

}  // namespace PK_NS
}  // namespace pk
