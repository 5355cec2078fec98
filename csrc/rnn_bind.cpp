// rnn_bind.cpp — pybind11 entry points of the LSTM / GRU sequence kernels (csrc/rnn.cpp).
//
// Arguments: fp64 (double, else float32), kind (0 LSTM, 1 GRU), T, B, I, H, reverse, then per
// tensor a raw data pointer (an int: tensor.data_ptr(); 0 = absent) followed by its strides in
// elements (x/y/dy/dx: t, b, column; states: b, column; weights: row, column; biases: one).
// batch_sizes is a pointer to int64 [T] (0 = every row at every step); ws the workspace of
// rnn_workspace_elems(kind, T, B, H) elements of the input dtype (0 in the forward: nothing saved).
// The Python layer (pykernels/ops/rnn.py) validates everything before calling; the GIL is released
// while the kernel runs.
//
//   rnn_forward(fp64, kind, T, B, I, H, reverse, x, sx.., h0, sh0.., c0, sc0.., w_ih, swi.., w_hh, swh..,
//               b_ih, sbi, b_hh, sbh, batch_sizes, y, sy.., hn, shn.., cn, scn.., ws)
//   rnn_backward(fp64, kind, T, B, I, H, reverse, x, sx.., h0, sh0.., c0, sc0.., w_ih, swi.., w_hh, swh..,
//                b_hh, sbh, batch_sizes, ws, dy, sdy.., dhn, sdhn.., dcn, sdcn.., dx, sdx.., dh0, sdh0..,
//                dc0, sdc0.., dw_ih, sdwi.., dw_hh, sdwh.., db_ih, sdbi, db_hh, sdbh)
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind_check.h"
#include "common.h"

namespace py = pybind11;

namespace {

using S = int64_t;
using P = uintptr_t;

template <typename T> T* ptr(P p) { return reinterpret_cast<T*>(p); }

// The arguments both passes share: sizes, x, the states, the weights, batch_sizes, ws.
// Kind, sizes and the pointers every pass reads; ValueError otherwise.
void check_common(const char* fn, int kind, S T_, S B, S I, S H, P x, P w_ih, P w_hh) {
  using namespace pk::check;
  require(kind == 0 || kind == 1, fn, "kind must be 0 (LSTM) or 1 (GRU)");
  nonneg(fn, "T", T_); nonneg(fn, "B", B); nonneg(fn, "I", I); nonneg(fn, "H", H);
  const bool work = T_ > 0 && B > 0 && H > 0;
  pointer(fn, "x", x, work && I > 0);
  pointer(fn, "w_ih", w_ih, work && I > 0);
  pointer(fn, "w_hh", w_hh, work);
}

template <typename T>
pk::RnnArgs<T> common(int kind, S T_, S B, S I, S H, bool reverse, P x, S x0, S x1, S x2, P h0, S h00, S h01, P c0,
                      S c00, S c01, P w_ih, S wi0, S wi1, P w_hh, S wh0, S wh1, P b_hh, S sbh, P batch_sizes, P ws) {
  pk::RnnArgs<T> a{};
  a.kind = kind; a.steps = T_; a.B = B; a.I = I; a.H = H; a.reverse = reverse;
  a.x = ptr<const T>(x); a.sx[0] = x0; a.sx[1] = x1; a.sx[2] = x2;
  a.h0 = ptr<const T>(h0); a.sh0[0] = h00; a.sh0[1] = h01;
  a.c0 = ptr<const T>(c0); a.sc0[0] = c00; a.sc0[1] = c01;
  a.w_ih = ptr<const T>(w_ih); a.swi[0] = wi0; a.swi[1] = wi1;
  a.w_hh = ptr<const T>(w_hh); a.swh[0] = wh0; a.swh[1] = wh1;
  a.b_hh = ptr<const T>(b_hh); a.sbh = sbh;
  a.batch_sizes = ptr<const int64_t>(batch_sizes);
  a.ws = ptr<T>(ws);
  return a;
}

}  // namespace

void bind_rnn(py::module_& m) {
  auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("rnn_workspace_elems", &pk::rnn_workspace_elems,
        "Elements of the workspace the forward saves for the backward (kind 0 LSTM: 6*T*B*H, 1 GRU: 5*T*B*H).");

  m.def("rnn_forward",
        [](bool fp64, int kind, S T, S B, S I, S H, bool reverse, P x, S x0, S x1, S x2, P h0, S h00, S h01,
           P c0, S c00, S c01, P w_ih, S wi0, S wi1, P w_hh, S wh0, S wh1, P b_ih, S sbi, P b_hh, S sbh,
           P batch_sizes, P y, S y0, S y1, S y2, P hn, S hn0, S hn1, P cn, S cn0, S cn1, P ws) {
          check_common("rnn_forward", kind, T, B, I, H, x, w_ih, w_hh);
          pk::check::pointer("rnn_forward", "y", y, T > 0 && B > 0 && H > 0);
          auto run = [&](auto tag) {
            using Tp = decltype(tag);
            auto a = common<Tp>(kind, T, B, I, H, reverse, x, x0, x1, x2, h0, h00, h01, c0, c00, c01, w_ih, wi0, wi1,
                                w_hh, wh0, wh1, b_hh, sbh, batch_sizes, ws);
            a.b_ih = ptr<const Tp>(b_ih); a.sbi = sbi;
            a.y = ptr<Tp>(y); a.sy[0] = y0; a.sy[1] = y1; a.sy[2] = y2;
            a.hn = ptr<Tp>(hn); a.shn[0] = hn0; a.shn[1] = hn1;
            a.cn = ptr<Tp>(cn); a.scn[0] = cn0; a.scn[1] = cn1;
            PK_ISA_CALL(rnn_forward, a);
          };
          if (fp64) run(double{}); else run(float{});
        },
        nogil, "One LSTM/GRU layer over a sequence: y, hn (cn); the workspace for the backward when ws != 0.");

  m.def("rnn_backward",
        [](bool fp64, int kind, S T, S B, S I, S H, bool reverse, P x, S x0, S x1, S x2, P h0, S h00, S h01,
           P c0, S c00, S c01, P w_ih, S wi0, S wi1, P w_hh, S wh0, S wh1, P b_hh, S sbh, P batch_sizes,
           P ws, P dy, S dy0, S dy1, S dy2, P dhn, S dhn0, S dhn1, P dcn, S dcn0, S dcn1, P dx, S dx0, S dx1,
           S dx2, P dh0, S dh00, S dh01, P dc0, S dc00, S dc01, P dw_ih, S dwi0, S dwi1, P dw_hh, S dwh0,
           S dwh1, P db_ih, S sdbi, P db_hh, S sdbh) {
          check_common("rnn_backward", kind, T, B, I, H, x, w_ih, w_hh);
          pk::check::pointer("rnn_backward", "ws", ws, T > 0 && B > 0 && H > 0);
          auto run = [&](auto tag) {
            using Tp = decltype(tag);
            auto a = common<Tp>(kind, T, B, I, H, reverse, x, x0, x1, x2, h0, h00, h01, c0, c00, c01, w_ih, wi0, wi1,
                                w_hh, wh0, wh1, b_hh, sbh, batch_sizes, ws);
            a.dy = ptr<const Tp>(dy); a.sdy[0] = dy0; a.sdy[1] = dy1; a.sdy[2] = dy2;
            a.dhn = ptr<const Tp>(dhn); a.sdhn[0] = dhn0; a.sdhn[1] = dhn1;
            a.dcn = ptr<const Tp>(dcn); a.sdcn[0] = dcn0; a.sdcn[1] = dcn1;
            a.dx = ptr<Tp>(dx); a.sdx[0] = dx0; a.sdx[1] = dx1; a.sdx[2] = dx2;
            a.dh0 = ptr<Tp>(dh0); a.sdh0[0] = dh00; a.sdh0[1] = dh01;
            a.dc0 = ptr<Tp>(dc0); a.sdc0[0] = dc00; a.sdc0[1] = dc01;
            a.dw_ih = ptr<Tp>(dw_ih); a.sdwi[0] = dwi0; a.sdwi[1] = dwi1;
            a.dw_hh = ptr<Tp>(dw_hh); a.sdwh[0] = dwh0; a.sdwh[1] = dwh1;
            a.db_ih = ptr<Tp>(db_ih); a.sdbi = sdbi;
            a.db_hh = ptr<Tp>(db_hh); a.sdbh = sdbh;
            PK_ISA_CALL(rnn_backward, a);
          };
          if (fp64) run(double{}); else run(float{});
        },
        nogil, "Backprop through time of one LSTM/GRU layer: every non-null gradient fully written.");
}
