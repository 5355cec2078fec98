// bindings.cpp — the Python module pykernels._C (pybind11; no libtorch).
//
// Every kernel entry point takes raw data pointers (integers: tensor.data_ptr() or
// ndarray.ctypes.data), sizes and strides in elements; the Python layer (pykernels/ops and
// pykernels/numpy.py) validates arguments before calling. The GIL is released while kernels run.
// The ISA path is chosen once at import: the best of AVX-512 / AVX2 / generic that this CPU
// supports, or PYKERNELS_ISA=avx512|avx2|generic to force a (supported) one.
#include <pybind11/pybind11.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "bind_check.h"
#include "common.h"

namespace py = pybind11;
using pk::Act;

namespace {

struct IsaTable {
  const char* name;
  void (*gemm_f32)(const pk::GemmArgs<float>&);
  void (*gemm_f64)(const pk::GemmArgs<double>&);
  void (*bwd_f32)(const pk::EpilogueBwdArgs<float>&);
  void (*bwd_f64)(const pk::EpilogueBwdArgs<double>&);
  double (*peak)(int, bool);
};

#define PK_TABLE(NS)                                                                       \
  IsaTable {                                                                               \
    #NS, static_cast<void (*)(const pk::GemmArgs<float>&)>(pk::NS::gemm_forward),          \
        static_cast<void (*)(const pk::GemmArgs<double>&)>(pk::NS::gemm_forward),          \
        static_cast<void (*)(const pk::EpilogueBwdArgs<float>&)>(pk::NS::gemm_backward),   \
        static_cast<void (*)(const pk::EpilogueBwdArgs<double>&)>(pk::NS::gemm_backward),  \
        pk::NS::fma_peak_gflops                                                            \
  }

bool cpu_has(const std::string& isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("fma");
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return isa == "generic";
}

IsaTable choose_isa() {
  const char* forced = std::getenv("PYKERNELS_ISA");
  std::string want = forced ? forced : "";
  if (!want.empty() && want != "avx512" && want != "avx2" && want != "generic")
    throw std::runtime_error("PYKERNELS_ISA must be avx512, avx2 or generic, got '" + want + "'");
  if (!want.empty() && !cpu_has(want))
    throw std::runtime_error("PYKERNELS_ISA=" + want + " but this CPU does not support it");
#if defined(__x86_64__) || defined(__i386__)
  if (want == "avx512" || (want.empty() && cpu_has("avx512"))) return PK_TABLE(avx512);
  if (want == "avx2" || (want.empty() && cpu_has("avx2"))) return PK_TABLE(avx2);
#endif
  return PK_TABLE(generic);
}

IsaTable g_isa;
}  // namespace

const char* pk::active_isa() { return g_isa.name; }
void bind_pool2d(py::module_& m);  // pool2d_bind.cpp
void bind_conv2d(py::module_& m);  // conv2d_bind.cpp
void bind_attention(py::module_& m);  // attention_bind.cpp
void bind_rnn(py::module_& m);  // rnn_bind.cpp

namespace {

template <typename T> const T* cptr(uintptr_t p) { return reinterpret_cast<const T*>(p); }
template <typename T> T* mptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

Act to_act(int a) {
  pk::check::act("gemm", a);
  return static_cast<Act>(a);
}

template <typename T>
pk::GemmArgs<T> make_gemm(int64_t batch, int64_t M, int64_t N, int64_t K, uintptr_t a, int64_t sa_b,
                          int64_t sa_m, int64_t sa_k, uintptr_t b, int64_t sb_b, int64_t sb_k,
                          int64_t sb_n, uintptr_t c, int64_t sc_b, int64_t sc_m, int64_t sc_n,
                          uintptr_t bias, int64_t s_bias, int bias_dim, int act, uintptr_t preact,
                          int64_t sp_b, int64_t sp_m, int64_t sp_n, bool accumulate) {
  const char* fn = "gemm_forward";
  pk::check::nonneg(fn, "batch", batch); pk::check::nonneg(fn, "M", M); pk::check::nonneg(fn, "N", N);
  pk::check::nonneg(fn, "K", K);
  pk::check::require(bias_dim == 0 || bias_dim == 1, fn, "bias_dim must be 0 (bias along N) or 1 (along M)");
  const bool work = batch > 0 && M > 0 && N > 0;
  pk::check::pointer(fn, "c", c, work);
  pk::check::pointer(fn, "a", a, work && K > 0);
  pk::check::pointer(fn, "b", b, work && K > 0);
  return pk::GemmArgs<T>{batch, M, N, K, cptr<T>(a), sa_b, sa_m, sa_k, cptr<T>(b), sb_b, sb_k, sb_n,
                         mptr<T>(c), sc_b, sc_m, sc_n, cptr<T>(bias), s_bias, bias_dim, to_act(act),
                         mptr<T>(preact), sp_b, sp_m, sp_n, accumulate};
}

// ---- workspaces from the block cache, as DLPack capsules ------------------------------------
// A kernel's workspace that lives from a forward to its backward (the RNN's saved gates) is a
// torch tensor over a cached block: torch.from_dlpack takes the capsule, and when the tensor's
// storage dies torch calls the deleter, which gives the block back to the cache (from whatever
// thread frees it; no Python involved). DLPack's ABI, v0.x capsule protocol ("dltensor", renamed
// "used_dltensor" by the consumer): only what a 1-D float CPU tensor needs.
struct DLDevice { int32_t device_type; int32_t device_id; };
struct DLDataType { uint8_t code; uint8_t bits; uint16_t lanes; };
struct DLTensor {
  void* data; DLDevice device; int32_t ndim; DLDataType dtype; int64_t* shape; int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor { DLTensor dl_tensor; void* manager_ctx; void (*deleter)(DLManagedTensor*); };

struct Workspace {
  DLManagedTensor m;
  pk::CacheBlock block;
  int64_t shape[1];
};

void workspace_deleter(DLManagedTensor* m) {
  Workspace* w = static_cast<Workspace*>(m->manager_ctx);
  pk::cache_release(w->block);
  delete w;
}

void workspace_capsule_destructor(PyObject* cap) {  // a capsule never handed to a consumer
  if (!PyCapsule_IsValid(cap, "dltensor")) return;
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
  if (m) m->deleter(m);
}

py::object workspace(int64_t numel, int itemsize) {
  pk::check::require(numel >= 0, "workspace", "numel must be >= 0");
  pk::check::require(itemsize == 4 || itemsize == 8, "workspace", "itemsize must be 4 (float32) or 8 (float64)");
  pk::check::require(numel <= (int64_t(1) << 56) / itemsize, "workspace", "numel must be below 2^56 bytes / itemsize");
  auto* w = new Workspace{};
  try {
    w->block = pk::cache_acquire(static_cast<size_t>(numel) * itemsize);
  } catch (...) {
    delete w;
    throw;
  }
  w->shape[0] = numel;
  DLTensor& t = w->m.dl_tensor;
  t.data = w->block.p;
  t.device = DLDevice{1, 0};  // kDLCPU
  t.ndim = 1;
  t.dtype = DLDataType{2, static_cast<uint8_t>(8 * itemsize), 1};  // kDLFloat
  t.shape = w->shape;
  t.strides = nullptr;  // compact
  t.byte_offset = 0;
  w->m.manager_ctx = w;
  w->m.deleter = workspace_deleter;
  PyObject* cap = PyCapsule_New(&w->m, "dltensor", workspace_capsule_destructor);
  if (!cap) {
    workspace_deleter(&w->m);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(cap);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pykernels C++ CPU kernels (raw pointers + strides; sizes and pointers checked here, see bind_check.h)";
  g_isa = choose_isa();

  m.def("isa", [] { return std::string(g_isa.name); }, "The SIMD path chosen at import.");
  bind_pool2d(m);
  bind_conv2d(m);
  bind_attention(m);
  bind_rnn(m);
  m.def("cpu_supports", &cpu_has, py::arg("isa"));
  m.def("set_num_threads", [](int n) {
    if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
    pk::set_num_threads(n);
  }, py::arg("n"));
  m.def("get_num_threads", &pk::num_threads);
  m.def("attach_host_openmp", &pk::attach_host_openmp,
        "Run parallel regions on the process's OpenMP runtime (torch's libgomp); False if absent.");
  m.def("gemm_direct_mode", &pk::gemm_direct_mode);
  m.def("set_gemm_direct_mode", &pk::set_gemm_direct_mode, py::arg("mode"),
        "-1: small GEMMs skip packing (default); 0: always pack; 1: read A in place always.");
  m.def("thread_backend", [] { return std::string(pk::thread_backend()); });
  m.def("workspace", &workspace, py::arg("numel"), py::arg("itemsize"),
        "A DLPack capsule over a block of the block cache (numel floats of itemsize bytes, "
        "contents undefined); the block goes back to the cache when the consumer frees it.");
  m.def("empty_cache", &pk::cache_empty, "Frees the block cache's free blocks; returns the bytes freed.");
  m.def("cached_bytes", &pk::cache_cached_bytes, "Bytes held in the block cache's free blocks.");
  m.def("poison_cache", &pk::cache_poison, "Fills the block cache's free blocks with NaN (for tests).");
  m.def("fma_peak_gflops", [](int threads, const std::string& dtype) {
    if (dtype != "float32" && dtype != "float64")
      throw std::invalid_argument("dtype must be 'float32' or 'float64'");
    return g_isa.peak(threads, dtype == "float64");
  }, py::arg("threads"), py::arg("dtype") = "float32", py::call_guard<py::gil_scoped_release>(),
        "Measured fp32/fp64 FMA peak (GFLOP/s) of the chosen ISA path with `threads` threads.");

  m.def("gemm_forward",
        [](bool fp64, int64_t batch, int64_t M, int64_t N, int64_t K, uintptr_t a, int64_t sa_b,
           int64_t sa_m, int64_t sa_k, uintptr_t b, int64_t sb_b, int64_t sb_k, int64_t sb_n,
           uintptr_t c, int64_t sc_b, int64_t sc_m, int64_t sc_n, uintptr_t bias, int64_t s_bias,
           int bias_dim, int act, uintptr_t preact, int64_t sp_b, int64_t sp_m, int64_t sp_n,
           bool accumulate) {
          if (fp64)
            g_isa.gemm_f64(make_gemm<double>(batch, M, N, K, a, sa_b, sa_m, sa_k, b, sb_b, sb_k, sb_n, c,
                                             sc_b, sc_m, sc_n, bias, s_bias, bias_dim, act, preact,
                                             sp_b, sp_m, sp_n, accumulate));
          else
            g_isa.gemm_f32(make_gemm<float>(batch, M, N, K, a, sa_b, sa_m, sa_k, b, sb_b, sb_k, sb_n, c,
                                            sc_b, sc_m, sc_n, bias, s_bias, bias_dim, act, preact,
                                            sp_b, sp_m, sp_n, accumulate));
        },
        py::call_guard<py::gil_scoped_release>(),
        "gemm_forward(fp64, batch, M, N, K, a, sa_b, sa_m, sa_k, b, sb_b, sb_k, sb_n, c, sc_b, sc_m, "
        "sc_n, bias, s_bias, bias_dim, act, preact, sp_b, sp_m, sp_n, accumulate): "
        "c[b] = act(a[b] @ b[b] (+ c[b]) + bias); pointers are integers, 0 = absent.");

  m.def("gemm_backward",
        [](bool fp64, int64_t M, int64_t N, uintptr_t dy, int64_t sdy_m, int64_t sdy_n,
           uintptr_t saved, int64_t ss_m, int64_t ss_n, int act, uintptr_t dz, int64_t sdz_m,
           int64_t sdz_n, uintptr_t dbias, int64_t s_dbias) {
          const char* fn = "gemm_backward";
          pk::check::nonneg(fn, "M", M); pk::check::nonneg(fn, "N", N);
          const bool work = M > 0 && N > 0 && (dz != 0 || dbias != 0);
          pk::check::pointer(fn, "dy", dy, work);
          pk::check::pointer(fn, "saved", saved, work && dz != 0 && act != 0);
          if (fp64)
            g_isa.bwd_f64({M, N, cptr<double>(dy), sdy_m, sdy_n, cptr<double>(saved), ss_m, ss_n,
                           to_act(act), mptr<double>(dz), sdz_m, sdz_n, mptr<double>(dbias), s_dbias});
          else
            g_isa.bwd_f32({M, N, cptr<float>(dy), sdy_m, sdy_n, cptr<float>(saved), ss_m, ss_n,
                           to_act(act), mptr<float>(dz), sdz_m, sdz_n, mptr<float>(dbias), s_dbias});
        },
        py::call_guard<py::gil_scoped_release>(),
        "gemm_backward(fp64, M, N, dy, sdy_m, sdy_n, saved, ss_m, ss_n, act, dz, sdz_m, sdz_n, "
        "dbias, s_dbias): dz = dy * act'(saved); dbias = dz.sum(0) when dbias != 0.");
}
