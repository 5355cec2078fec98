// attention_bind.cpp — pybind11 entry points of the fused attention kernels (csrc/attention.cpp).
//
// Every function takes `fp64` first (double, else float32), then B, H, N, S, D, Dv, then per
// tensor a raw data pointer (an int: tensor.data_ptr(); 0 = absent) followed by its strides in
// elements (b, h, row, column; lse: b, h, row). mask_kind: 0 none, 1 bool bytes, 2 additive of
// the input dtype; the mask's strides are over (b, h, i, j) with 0 on broadcast dims. The Python
// layer (pykernels/ops/attention.py) validates everything before calling; the GIL is released
// while the kernel runs.
//
// (each `sx..` below is that tensor's 4 strides as separate ints; lse has 3)
//   attention_forward(fp64, B, H, N, S, D, Dv, q, sq.., k, sk.., v, sv.., mask, mask_kind, sm..,
//                     causal, scale, dropout_p, seed, out, so.., lse, sl..)
//   attention_backward(fp64, B, H, N, S, D, Dv, q, sq.., k, sk.., v, sv.., out, so.., dout, sdo..,
//                      lse, sl.., mask, mask_kind, sm.., causal, scale, dropout_p, seed,
//                      dq, sdq.., dk, sdk.., dv, sdv.., dmask, sdm..)
#include <pybind11/pybind11.h>

#include <array>
#include <cmath>
#include <cstdint>

#include "bind_check.h"
#include "common.h"

namespace py = pybind11;

namespace {

using S = int64_t;
using P = uintptr_t;
using S4 = std::array<S, 4>;
using S3 = std::array<S, 3>;

// One strided tensor argument as Python passes it: (pointer, strides).
template <typename T, size_t R>
void set(T*& ptr, S (&dst)[R], P p, const std::array<S, R>& st) {
  ptr = reinterpret_cast<T*>(p);
  for (size_t i = 0; i < R; ++i) dst[i] = st[i];
}

// Sizes, mask kind, scale and dropout an attention call can have, and its operand pointers.
void check_common(const char* fn, S B, S H, S N, S Sk, S D, S Dv, P q, P k, P v, P mask, int kind,
                  double scale, double dropout_p) {
  using namespace pk::check;
  nonneg(fn, "B", B); nonneg(fn, "H", H); nonneg(fn, "N", N); nonneg(fn, "S", Sk);
  nonneg(fn, "D", D); nonneg(fn, "Dv", Dv);
  require(kind >= 0 && kind <= 2, fn, "mask kind must be 0 (none), 1 (bool) or 2 (additive)");
  require(std::isfinite(scale), fn, "scale must be finite");
  require(dropout_p >= 0.0 && dropout_p < 1.0, fn, "dropout_p must be in [0, 1)");
  const bool work = B > 0 && H > 0 && N > 0 && Sk > 0;
  pointer(fn, "q", q, work && D > 0);
  pointer(fn, "k", k, work && D > 0);
  pointer(fn, "v", v, work && Dv > 0);
  pointer(fn, "mask", mask, work && kind != 0);
}

template <typename T>
pk::AttnArgs<T> common_args(S B, S H, S N, S Sk, S D, S Dv, P q, const S4& sq, P k, const S4& sk, P v,
                            const S4& sv, P mask, int kind, const S4& sm, bool causal, double scale,
                            double dropout_p, uint64_t seed) {
  pk::AttnArgs<T> a{};
  a.B = B; a.H = H; a.N = N; a.S = Sk; a.D = D; a.Dv = Dv;
  set(a.q, a.sq, q, sq);
  set(a.k, a.sk, k, sk);
  set(a.v, a.sv, v, sv);
  a.mask = reinterpret_cast<const void*>(mask);
  a.mask_kind = kind;
  for (int i = 0; i < 4; ++i) a.sm[i] = sm[i];
  a.causal = causal; a.scale = scale; a.dropout_p = dropout_p; a.seed = seed;
  return a;
}

}  // namespace

void bind_attention(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("attention_forward",
        [](bool fp64, S B, S H, S N, S Sk, S D, S Dv,
           P q, S q0, S q1, S q2, S q3, P k, S k0, S k1, S k2, S k3, P v, S v0, S v1, S v2, S v3,
           P mask, int kind, S m0, S m1, S m2, S m3, bool causal, double scale, double dropout_p,
           uint64_t seed, P out, S o0, S o1, S o2, S o3, P lse, S l0, S l1, S l2) {
          check_common("attention_forward", B, H, N, Sk, D, Dv, q, k, v, mask, kind, scale, dropout_p);
          pk::check::pointer("attention_forward", "out", out, B > 0 && H > 0 && N > 0 && Dv > 0);
          pk::check::pointer("attention_forward", "lse", lse, B > 0 && H > 0 && N > 0);
          auto run = [&](auto tag) {
            using T = decltype(tag);
            auto a = common_args<T>(B, H, N, Sk, D, Dv, q, {q0, q1, q2, q3}, k, {k0, k1, k2, k3}, v,
                                    {v0, v1, v2, v3}, mask, kind, {m0, m1, m2, m3}, causal, scale, dropout_p, seed);
            set(a.out, a.so, out, {o0, o1, o2, o3});
            set(a.lse, a.sl, lse, {l0, l1, l2});
            PK_ISA_CALL(attention_forward, a);
          };
          if (fp64)
            run(double{});
          else
            run(float{});
        },
        nogil, "out = softmax(scale * q k^T + mask) v (dropout, causal); lse = the rows' log-sum-exp.");

  m.def("attention_backward",
        [](bool fp64, S B, S H, S N, S Sk, S D, S Dv,
           P q, S q0, S q1, S q2, S q3, P k, S k0, S k1, S k2, S k3, P v, S v0, S v1, S v2, S v3,
           P out, S o0, S o1, S o2, S o3, P dout, S g0, S g1, S g2, S g3, P lse, S l0, S l1, S l2,
           P mask, int kind, S m0, S m1, S m2, S m3, bool causal, double scale, double dropout_p,
           uint64_t seed, P dq, S dq0, S dq1, S dq2, S dq3, P dk, S dk0, S dk1, S dk2, S dk3,
           P dv, S dv0, S dv1, S dv2, S dv3, P dmask, S dm0, S dm1, S dm2, S dm3) {
          const char* fn = "attention_backward";
          check_common(fn, B, H, N, Sk, D, Dv, q, k, v, mask, kind, scale, dropout_p);
          const bool work = B > 0 && H > 0 && N > 0 && Sk > 0;
          pk::check::pointer(fn, "out", out, work && Dv > 0);
          pk::check::pointer(fn, "dout", dout, work && Dv > 0);
          pk::check::pointer(fn, "lse", lse, work);
          auto run = [&](auto tag) {
            using T = decltype(tag);
            auto a = common_args<T>(B, H, N, Sk, D, Dv, q, {q0, q1, q2, q3}, k, {k0, k1, k2, k3}, v,
                                    {v0, v1, v2, v3}, mask, kind, {m0, m1, m2, m3}, causal, scale, dropout_p, seed);
            set(a.out, a.so, out, {o0, o1, o2, o3});
            set(a.dout, a.sdo, dout, {g0, g1, g2, g3});
            set(a.lse, a.sl, lse, {l0, l1, l2});
            set(a.dq, a.sdq, dq, {dq0, dq1, dq2, dq3});
            set(a.dk, a.sdk, dk, {dk0, dk1, dk2, dk3});
            set(a.dv, a.sdv, dv, {dv0, dv1, dv2, dv3});
            set(a.dmask, a.sdm, dmask, {dm0, dm1, dm2, dm3});
            PK_ISA_CALL(attention_backward, a);
          };
          if (fp64)
            run(double{});
          else
            run(float{});
        },
        nogil, "dq, dk, dv (and dmask = dS when dmask != 0) of attention for grad_out dout.");
}
