// peak.cpp — measures this machine's FMA peak for the ISA path in use (the "fraction of the
// machine's limit" that every GEMM benchmark reports is relative to this number).
//
// Each thread runs CHAINS independent chains of vector FMAs (acc = acc * m + a) — enough
// independent chains to cover FMA latency x throughput on current x86 cores — for a fixed
// number of iterations; GFLOP/s = threads * iters * CHAINS * lanes * 2 / seconds.
// Test: pytest tests/test_gemm.py -k peak    Benchmark: python -m pykernels bench gemm
#include <atomic>
#include <chrono>
#include <vector>

#include "common.h"
#include "isa.h"

namespace pk {
namespace PK_NS {
namespace {

template <typename T>
double peak_impl(int threads) {
  constexpr int CHAINS = 12;
  const int64_t iters = 4000000;
  std::atomic<int> arrived{0};
  std::vector<double> sink(threads, 0.0);
  auto body = [&](int64_t t, int) {
    // Start together: a task waits (bounded) until every thread has taken one.
    arrived.fetch_add(1);
    auto t0 = std::chrono::steady_clock::now();
    while (arrived.load() < threads &&
           std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(200)) {
    }
    V<T> acc[CHAINS];
    for (int c = 0; c < CHAINS; ++c) acc[c] = vbcast(T(1) + T(c) * T(1e-3));
    const V<T> m = vbcast(T(0.999999)), a = vbcast(T(1e-6));
    for (int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
      for (int c = 0; c < CHAINS; ++c) acc[c] = acc[c] * m + a;
    }
    V<T> total = acc[0];
#pragma GCC unroll 12
    for (int c = 1; c < CHAINS; ++c) total += acc[c];
    T out[lanes<T>()];
    vstore(out, total);
    sink[t] = static_cast<double>(out[0]);
  };
  const int saved = num_threads();
  set_num_threads(threads);
  parallel_for(threads, body);  // warm-up: wakes the pool and the clocks
  arrived.store(0);
  auto start = std::chrono::steady_clock::now();
  parallel_for(threads, body);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  set_num_threads(saved);
  volatile double keep = sink[0];
  (void)keep;
  return 2.0 * threads * iters * CHAINS * lanes<T>() / secs / 1e9;
}

}  // namespace

double fma_peak_gflops(int threads, bool fp64) {
  if (threads < 1) threads = 1;
  return fp64 ? peak_impl<double>(threads) : peak_impl<float>(threads);
}

}  // namespace PK_NS
}  // namespace pk
