// pool2d_bind.cpp — pybind11 entry points of the pooling kernels (csrc/pool2d.cpp).
//
// Every function takes `fp64` first, then the input's sizes N, C, H, W, then per tensor a raw
// data pointer (an int: tensor.data_ptr()) followed by its 4 strides in elements (n, c, h, w),
// output sizes OH, OW after the first tensor, and the window last. The Python layer
// (pykernels/ops/pool2d.py) validates everything before calling; the GIL is released while the
// kernel runs. The ISA path is the one bindings.cpp chose at import (PK_ISA_CALL).
//
//   max_pool2d_forward(fp64, N, C, H, W, x, sx.., OH, OW, out, so.., idx, si.., kH, kW, sH, sW, pH, pW, dH, dW,
//                      idx32=False)      idx = 0: indices not written; idx32: int32 indices, else int64
//   adaptive_max_pool2d_forward(fp64, N, C, H, W, x, sx.., OH, OW, out, so.., idx, si.., idx32=False)
//   max_pool2d_backward(fp64, N, C, H, W, grad_in, sgi.., OH, OW, grad_out, sgo.., idx, si.., idx32=False)
//   avg_pool2d_forward(fp64, N, C, H, W, x, sx.., OH, OW, out, so.., kH, kW, sH, sW, pH, pW,
//                      count_include_pad, divisor_override)          divisor_override 0 = none
//   avg_pool2d_backward(fp64, N, C, H, W, grad_in, sgi.., OH, OW, grad_out, sgo.., kH, kW, sH, sW,
//                       pH, pW, count_include_pad, divisor_override)
//   adaptive_avg_pool2d_forward(fp64, N, C, H, W, x, sx.., OH, OW, out, so..)
//   adaptive_avg_pool2d_backward(fp64, N, C, H, W, grad_in, sgi.., OH, OW, grad_out, sgo..)
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind_check.h"
#include "common.h"

namespace py = pybind11;

namespace {

using S = int64_t;
using P = uintptr_t;

template <typename T>
pk::Pool2dArgs<T> make(S N, S C, S H, S W, P in, S i0, S i1, S i2, S i3, S OH, S OW, P out, S o0, S o1,
                       S o2, S o3, P idx, S x0, S x1, S x2, S x3, bool idx32, const pk::PoolWindow& win) {
  return pk::Pool2dArgs<T>{N, C, H, W, OH, OW,
                           reinterpret_cast<T*>(in), {i0, i1, i2, i3},
                           reinterpret_cast<T*>(out), {o0, o1, o2, o3},
                           reinterpret_cast<void*>(idx), {x0, x1, x2, x3}, idx32,
                           win};
}

// Runs FN on the float or double view of the arguments.
#define PK_POOL_RUN(FN, fp64, ...)                                \
  do {                                                            \
    if (fp64) {                                                   \
      const auto args = make<double>(__VA_ARGS__);                \
      PK_ISA_CALL(FN, args);                                      \
    } else {                                                      \
      const auto args = make<float>(__VA_ARGS__);                 \
      PK_ISA_CALL(FN, args);                                      \
    }                                                             \
  } while (0)

// Sizes a pooling can have, and the pointers it reads / writes; ValueError otherwise.
void sizes(const char* fn, S N, S C, S H, S W, S OH, S OW, P in, P out) {
  using namespace pk::check;
  nonneg(fn, "N", N); nonneg(fn, "C", C); nonneg(fn, "H", H); nonneg(fn, "W", W);
  nonneg(fn, "OH", OH); nonneg(fn, "OW", OW);
  const bool work = N > 0 && C > 0 && OH > 0 && OW > 0;
  pointer(fn, "the input", in, work || (N > 0 && C > 0 && H > 0 && W > 0));
  pointer(fn, "the output", out, work);
  require(!work || (H > 0 && W > 0), fn, "H and W must be >= 1 when there is an output");
}

// A window a regular pooling can have (torch's rules: padding at most half the window).
void window(const char* fn, int kH, int kW, int sH, int sW, int pH, int pW, int dH, int dW) {
  using namespace pk::check;
  positive(fn, "kH", kH); positive(fn, "kW", kW); positive(fn, "sH", sH); positive(fn, "sW", sW);
  positive(fn, "dH", dH); positive(fn, "dW", dW); nonneg(fn, "pH", pH); nonneg(fn, "pW", pW);
  require(2 * pH <= kH && 2 * pW <= kW, fn, "padding must be at most half the window (pH <= kH/2, pW <= kW/2)");
}

pk::PoolWindow regular(int kH, int kW, int sH, int sW, int pH, int pW, int dH, int dW, bool cip = true,
                       S div = 0) {
  return pk::PoolWindow{kH, kW, sH, sW, pH, pW, dH, dW, false, cip, div};
}
pk::PoolWindow adaptive() { return pk::PoolWindow{1, 1, 1, 1, 0, 0, 1, 1, true, true, 0}; }

}  // namespace

void bind_pool2d(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("max_pool2d_forward",
        [](bool fp64, S N, S C, S H, S W, P x, S sx0, S sx1, S sx2, S sx3, S OH, S OW, P out, S so0,
           S so1, S so2, S so3, P idx, S si0, S si1, S si2, S si3, int kH, int kW, int sH, int sW,
           int pH, int pW, int dH, int dW, bool idx32) {
          sizes("max_pool2d_forward", N, C, H, W, OH, OW, x, out);
          window("max_pool2d_forward", kH, kW, sH, sW, pH, pW, dH, dW);
          PK_POOL_RUN(max_pool2d_forward, fp64, N, C, H, W, x, sx0, sx1, sx2, sx3, OH, OW, out, so0, so1,
                      so2, so3, idx, si0, si1, si2, si3, idx32, regular(kH, kW, sH, sW, pH, pW, dH, dW));
        },
        py::arg("fp64"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("x"), py::arg("sx0"),
        py::arg("sx1"), py::arg("sx2"), py::arg("sx3"), py::arg("OH"), py::arg("OW"), py::arg("out"),
        py::arg("so0"), py::arg("so1"), py::arg("so2"), py::arg("so3"), py::arg("idx"), py::arg("si0"),
        py::arg("si1"), py::arg("si2"), py::arg("si3"), py::arg("kH"), py::arg("kW"), py::arg("sH"),
        py::arg("sW"), py::arg("pH"), py::arg("pW"), py::arg("dH"), py::arg("dW"), py::arg("idx32") = false,
        nogil, "out = max over each window; idx (flat h*W + w; int64, int32 if idx32) when idx != 0.");

  m.def("adaptive_max_pool2d_forward",
        [](bool fp64, S N, S C, S H, S W, P x, S sx0, S sx1, S sx2, S sx3, S OH, S OW, P out, S so0,
           S so1, S so2, S so3, P idx, S si0, S si1, S si2, S si3, bool idx32) {
          sizes("adaptive_max_pool2d_forward", N, C, H, W, OH, OW, x, out);
          PK_POOL_RUN(max_pool2d_forward, fp64, N, C, H, W, x, sx0, sx1, sx2, sx3, OH, OW, out, so0, so1,
                      so2, so3, idx, si0, si1, si2, si3, idx32, adaptive());
        },
        py::arg("fp64"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("x"), py::arg("sx0"),
        py::arg("sx1"), py::arg("sx2"), py::arg("sx3"), py::arg("OH"), py::arg("OW"), py::arg("out"),
        py::arg("so0"), py::arg("so1"), py::arg("so2"), py::arg("so3"), py::arg("idx"), py::arg("si0"),
        py::arg("si1"), py::arg("si2"), py::arg("si3"), py::arg("idx32") = false,
        nogil, "out = max over each adaptive window; idx when idx != 0 (int32 if idx32).");

  m.def("max_pool2d_backward",
        [](bool fp64, S N, S C, S H, S W, P gi, S sg0, S sg1, S sg2, S sg3, S OH, S OW, P go, S so0,
           S so1, S so2, S so3, P idx, S si0, S si1, S si2, S si3, bool idx32) {
          sizes("max_pool2d_backward", N, C, H, W, OH, OW, go, gi);
          pk::check::pointer("max_pool2d_backward", "idx", idx, N > 0 && C > 0 && OH > 0 && OW > 0);
          PK_POOL_RUN(max_pool2d_backward, fp64, N, C, H, W, gi, sg0, sg1, sg2, sg3, OH, OW, go, so0,
                      so1, so2, so3, idx, si0, si1, si2, si3, idx32, adaptive());
        },
        py::arg("fp64"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("grad_in"),
        py::arg("sg0"), py::arg("sg1"), py::arg("sg2"), py::arg("sg3"), py::arg("OH"), py::arg("OW"),
        py::arg("grad_out"), py::arg("so0"), py::arg("so1"), py::arg("so2"), py::arg("so3"), py::arg("idx"),
        py::arg("si0"), py::arg("si1"), py::arg("si2"), py::arg("si3"), py::arg("idx32") = false,
        nogil, "grad_in = 0, then grad_in[n, c].flat[idx] += grad_out (max and adaptive max; int32 idx if idx32).");

  m.def("avg_pool2d_forward",
        [](bool fp64, S N, S C, S H, S W, P x, S sx0, S sx1, S sx2, S sx3, S OH, S OW, P out, S so0,
           S so1, S so2, S so3, int kH, int kW, int sH, int sW, int pH, int pW, bool cip, S div) {
          sizes("avg_pool2d_forward", N, C, H, W, OH, OW, x, out);
          window("avg_pool2d_forward", kH, kW, sH, sW, pH, pW, 1, 1);
          pk::check::nonneg("avg_pool2d_forward", "div", div);
          PK_POOL_RUN(avg_pool2d_forward, fp64, N, C, H, W, x, sx0, sx1, sx2, sx3, OH, OW, out, so0, so1,
                      so2, so3, 0, 0, 0, 0, 0, false, regular(kH, kW, sH, sW, pH, pW, 1, 1, cip, div));
        },
        nogil, "out = window sum / divisor (torch's avg_pool2d rule).");

  m.def("avg_pool2d_backward",
        [](bool fp64, S N, S C, S H, S W, P gi, S sg0, S sg1, S sg2, S sg3, S OH, S OW, P go, S so0,
           S so1, S so2, S so3, int kH, int kW, int sH, int sW, int pH, int pW, bool cip, S div) {
          sizes("avg_pool2d_backward", N, C, H, W, OH, OW, go, gi);
          window("avg_pool2d_backward", kH, kW, sH, sW, pH, pW, 1, 1);
          pk::check::nonneg("avg_pool2d_backward", "div", div);
          PK_POOL_RUN(avg_pool2d_backward, fp64, N, C, H, W, gi, sg0, sg1, sg2, sg3, OH, OW, go, so0,
                      so1, so2, so3, 0, 0, 0, 0, 0, false, regular(kH, kW, sH, sW, pH, pW, 1, 1, cip, div));
        },
        nogil, "grad_in = sum over covering windows of grad_out / divisor (gather form).");

  m.def("adaptive_avg_pool2d_forward",
        [](bool fp64, S N, S C, S H, S W, P x, S sx0, S sx1, S sx2, S sx3, S OH, S OW, P out, S so0,
           S so1, S so2, S so3) {
          sizes("adaptive_avg_pool2d_forward", N, C, H, W, OH, OW, x, out);
          PK_POOL_RUN(avg_pool2d_forward, fp64, N, C, H, W, x, sx0, sx1, sx2, sx3, OH, OW, out, so0, so1,
                      so2, so3, 0, 0, 0, 0, 0, false, adaptive());
        },
        nogil, "out = mean over each adaptive window.");

  m.def("adaptive_avg_pool2d_backward",
        [](bool fp64, S N, S C, S H, S W, P gi, S sg0, S sg1, S sg2, S sg3, S OH, S OW, P go, S so0,
           S so1, S so2, S so3) {
          sizes("adaptive_avg_pool2d_backward", N, C, H, W, OH, OW, go, gi);
          PK_POOL_RUN(avg_pool2d_backward, fp64, N, C, H, W, gi, sg0, sg1, sg2, sg3, OH, OW, go, so0,
                      so1, so2, so3, 0, 0, 0, 0, 0, false, adaptive());
        },
        nogil, "grad_in = sum over covering adaptive windows of grad_out / window size.");
}
