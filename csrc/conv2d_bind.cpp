// conv2d_bind.cpp — pybind11 entry points of the convolution kernels (csrc/conv2d.cpp).
//
// Every function takes `fp64` first, then the geometry of the FORWARD convolution (input N, C, H, W;
// K output channels; kernel R, S; output OH, OW; groups; stride sH, sW; top/left padding pH, pW;
// dilation dH, dW), then per tensor a raw data pointer (an int: tensor.data_ptr()) followed by its
// 4 strides in elements (n, c, h, w for images; k, c, r, s for the weight). Pointer 0 = absent.
// The Python layer (pykernels/ops/conv2d.py) validates everything before calling, and Geometry::check
// (bind_check.h) rejects impossible values in a direct call; the GIL is
// released while the kernel runs. The ISA path is the one bindings.cpp chose at import.
//
//   conv2d_forward(fp64, N, C, H, W, K, R, S, OH, OW, groups, sH, sW, pH, pW, dH, dW,
//                  x, sx.., w, sw.., bias, s_bias, act, out, so.., preact, sp..)
//   conv2d_backward_input(fp64, <geometry>, dy, sdy.., w, sw.., dx, sdx.., bias, s_bias)
//   conv2d_backward_weight(fp64, <geometry>, dy, sdy.., x, sx.., dw, sdw..)
//   conv2d_backward_bias(fp64, N, K, OH, OW, dy, sdy.., saved, ss.., act, dz, sdz.., dbias, s_dbias)
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind_check.h"
#include "common.h"

namespace py = pybind11;

namespace {

using S = int64_t;
using P = uintptr_t;

struct Geometry {
  S N, C, H, W, K, R, S_, OH, OW, groups, sH, sW, pH, pW, dH, dW;

  // Sizes, window and groups a convolution can have; ValueError otherwise.
  void check(const char* fn) const {
    using namespace pk::check;
    nonneg(fn, "N", N); nonneg(fn, "C", C); nonneg(fn, "H", H); nonneg(fn, "W", W); nonneg(fn, "K", K);
    nonneg(fn, "OH", OH); nonneg(fn, "OW", OW); nonneg(fn, "pH", pH); nonneg(fn, "pW", pW);
    positive(fn, "R", R); positive(fn, "S", S_); positive(fn, "groups", groups);
    positive(fn, "sH", sH); positive(fn, "sW", sW); positive(fn, "dH", dH); positive(fn, "dW", dW);
    require(C % groups == 0 && K % groups == 0, fn, "groups must divide both C and K");
  }
  bool has_out() const { return N > 0 && K > 0 && OH > 0 && OW > 0; }
  bool has_in() const { return N > 0 && C > 0 && H > 0 && W > 0; }
};

template <typename T>
pk::ConvArgs<T> make(const Geometry& g, P x, S x0, S x1, S x2, S x3, P w, S w0, S w1, S w2, S w3, P y,
                     S y0, S y1, S y2, S y3, P bias, S s_bias, int act, P pre, S p0, S p1, S p2, S p3) {
  return pk::ConvArgs<T>{g.N, g.C, g.H, g.W, g.K, g.R, g.S_, g.OH, g.OW, g.groups, g.sH, g.sW, g.pH, g.pW,
                         g.dH, g.dW,
                         reinterpret_cast<T*>(x), {x0, x1, x2, x3},
                         reinterpret_cast<T*>(w), {w0, w1, w2, w3},
                         reinterpret_cast<T*>(y), {y0, y1, y2, y3},
                         reinterpret_cast<const T*>(bias), s_bias,
                         static_cast<pk::Act>(act),
                         reinterpret_cast<T*>(pre), {p0, p1, p2, p3}};
}

#define PK_CONV_RUN(FN, fp64, ...)                 \
  do {                                             \
    if (fp64) {                                    \
      const auto args = make<double>(__VA_ARGS__); \
      PK_ISA_CALL(FN, args);                       \
    } else {                                       \
      const auto args = make<float>(__VA_ARGS__);  \
      PK_ISA_CALL(FN, args);                       \
    }                                              \
  } while (0)

template <typename T>
pk::ConvBiasGradArgs<T> make_bias(S N, S K, S OH, S OW, P dy, S d0, S d1, S d2, S d3, P sv, S s0, S s1,
                                  S s2, S s3, int act, P dz, S z0, S z1, S z2, S z3, P db, S sdb) {
  return pk::ConvBiasGradArgs<T>{N, K, OH, OW,
                                 reinterpret_cast<const T*>(dy), {d0, d1, d2, d3},
                                 reinterpret_cast<const T*>(sv), {s0, s1, s2, s3},
                                 static_cast<pk::Act>(act),
                                 reinterpret_cast<T*>(dz), {z0, z1, z2, z3},
                                 reinterpret_cast<T*>(db), sdb};
}

}  // namespace

void bind_conv2d(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("conv2d_forward",
        [](bool fp64, S N, S C, S H, S W, S K, S R, S S_, S OH, S OW, S groups, S sH, S sW, S pH, S pW,
           S dH, S dW, P x, S sx0, S sx1, S sx2, S sx3, P w, S sw0, S sw1, S sw2, S sw3, P bias,
           S s_bias, int act, P out, S so0, S so1, S so2, S so3, P pre, S sp0, S sp1, S sp2, S sp3) {
          const Geometry g{N, C, H, W, K, R, S_, OH, OW, groups, sH, sW, pH, pW, dH, dW};
          g.check("conv2d_forward");
          pk::check::act("conv2d_forward", act);
          pk::check::pointer("conv2d_forward", "out", out, g.has_out());
          pk::check::pointer("conv2d_forward", "w", w, g.has_out() && C > 0);
          pk::check::pointer("conv2d_forward", "x", x, g.has_out() && g.has_in());
          PK_CONV_RUN(conv2d_forward, fp64, g, x, sx0, sx1, sx2, sx3, w, sw0, sw1, sw2, sw3, out, so0,
                      so1, so2, so3, bias, s_bias, act, pre, sp0, sp1, sp2, sp3);
        },
        nogil, "out = act(conv2d(x, w) + bias); preact = conv2d(x, w) + bias when pre != 0.");

  m.def("conv2d_backward_input",
        [](bool fp64, S N, S C, S H, S W, S K, S R, S S_, S OH, S OW, S groups, S sH, S sW, S pH, S pW,
           S dH, S dW, P dy, S sd0, S sd1, S sd2, S sd3, P w, S sw0, S sw1, S sw2, S sw3, P dx, S sx0,
           S sx1, S sx2, S sx3, P bias, S s_bias) {
          const Geometry g{N, C, H, W, K, R, S_, OH, OW, groups, sH, sW, pH, pW, dH, dW};
          g.check("conv2d_backward_input");
          pk::check::pointer("conv2d_backward_input", "dx", dx, g.has_in());
          pk::check::pointer("conv2d_backward_input", "w", w, g.has_in() && K > 0);
          pk::check::pointer("conv2d_backward_input", "dy", dy, g.has_in() && g.has_out());
          PK_CONV_RUN(conv2d_backward_input, fp64, g, dx, sx0, sx1, sx2, sx3, w, sw0, sw1, sw2, sw3, dy,
                      sd0, sd1, sd2, sd3, bias, s_bias, 0, 0, 0, 0, 0, 0);
        },
        nogil, "dx = the input gradient of conv2d for grad_out dy (every element written) + bias[c].");

  m.def("conv2d_backward_weight",
        [](bool fp64, S N, S C, S H, S W, S K, S R, S S_, S OH, S OW, S groups, S sH, S sW, S pH, S pW,
           S dH, S dW, P dy, S sd0, S sd1, S sd2, S sd3, P x, S sx0, S sx1, S sx2, S sx3, P dw, S sw0,
           S sw1, S sw2, S sw3) {
          const Geometry g{N, C, H, W, K, R, S_, OH, OW, groups, sH, sW, pH, pW, dH, dW};
          g.check("conv2d_backward_weight");
          pk::check::pointer("conv2d_backward_weight", "dw", dw, K > 0 && C > 0);
          pk::check::pointer("conv2d_backward_weight", "dy", dy, g.has_out() && C > 0);
          pk::check::pointer("conv2d_backward_weight", "x", x, g.has_out() && g.has_in());
          PK_CONV_RUN(conv2d_backward_weight, fp64, g, x, sx0, sx1, sx2, sx3, dw, sw0, sw1, sw2, sw3, dy,
                      sd0, sd1, sd2, sd3, 0, 0, 0, 0, 0, 0, 0, 0);
        },
        nogil, "dw = sum over n, oh, ow of dy x patches (every element written).");

  m.def("conv2d_backward_bias",
        [](bool fp64, S N, S K, S OH, S OW, P dy, S d0, S d1, S d2, S d3, P sv, S s0, S s1, S s2, S s3,
           int act, P dz, S z0, S z1, S z2, S z3, P db, S sdb) {
          const char* fn = "conv2d_backward_bias";
          pk::check::nonneg(fn, "N", N); pk::check::nonneg(fn, "K", K);
          pk::check::nonneg(fn, "OH", OH); pk::check::nonneg(fn, "OW", OW);
          pk::check::act(fn, act);
          const bool work = N > 0 && K > 0 && OH > 0 && OW > 0;
          pk::check::pointer(fn, "dy", dy, work && (dz != 0 || db != 0));
          pk::check::pointer(fn, "saved", sv, work && dz != 0 && act != 0);
          if (fp64) {
            const auto a = make_bias<double>(N, K, OH, OW, dy, d0, d1, d2, d3, sv, s0, s1, s2, s3, act,
                                             dz, z0, z1, z2, z3, db, sdb);
            PK_ISA_CALL(conv2d_backward_bias, a);
          } else {
            const auto a = make_bias<float>(N, K, OH, OW, dy, d0, d1, d2, d3, sv, s0, s1, s2, s3, act,
                                            dz, z0, z1, z2, z3, db, sdb);
            PK_ISA_CALL(conv2d_backward_bias, a);
          }
        },
        nogil, "dz = dy * act'(saved) (when dz != 0), dbias[k] = sum over n, oh, ow (when dbias != 0).");
}
