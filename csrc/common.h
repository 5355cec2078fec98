// pykernels C++ core: shared declarations for every CPU kernel.
//
// Nothing here knows about torch: kernels take raw pointers, sizes and strides (in elements).
// Kernel files (gemm.cpp, peak.cpp, ...) are compiled once per ISA (AVX-512, AVX2, generic) into
// separate namespaces pk::avx512, pk::avx2, pk::generic; bindings.cpp picks one at import.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace pk {

enum class Act : int { None = 0, Relu = 1, Gelu = 2, Tanh = 3, Sigmoid = 4 };

// One batched GEMM with a fused epilogue:
//   z[b] = a[b] @ b[b] (+ c[b] if accumulate) (+ bias),  c[b] = act(z[b]),  preact[b] = z[b] if given.
// a [batch, M, K], b [batch, K, N], c/preact [batch, M, N]; any strides (0 = broadcast batch).
// bias is indexed along N when bias_dim == 1 (Linear) and along M when bias_dim == 0 (conv).
template <typename T>
struct GemmArgs {
  int64_t batch, M, N, K;
  const T* a; int64_t sa_b, sa_m, sa_k;
  const T* b; int64_t sb_b, sb_k, sb_n;
  T* c; int64_t sc_b, sc_m, sc_n;
  const T* bias; int64_t s_bias; int bias_dim;
  Act act;
  T* preact; int64_t sp_b, sp_m, sp_n;
  bool accumulate;
};

// Backward of the fused epilogue on a 2-D [M, N] problem:
//   dz = dy * act'(saved)   (saved = y for none/relu/tanh/sigmoid, the pre-activation z for gelu)
//   dbias[n] = sum_m dz[m, n]   (when dbias != nullptr)
// dz == nullptr is allowed for act == None: then only dbias = sum_m dy[m, n] is computed.
template <typename T>
struct EpilogueBwdArgs {
  int64_t M, N;
  const T* dy; int64_t sdy_m, sdy_n;
  const T* saved; int64_t ss_m, ss_n;
  Act act;
  T* dz; int64_t sdz_m, sdz_n;
  T* dbias; int64_t s_dbias;
};

// ---- threads (threadpool.cpp) ------------------------------------------------------------
// torch's own OpenMP team when it is loaded (see threadpool.cpp), else a small private pool.
int num_threads();
void set_num_threads(int n);
// GEMM operand packing: -1 automatic (small problems read operands in place), 0 always pack,
// 1 never pack A (nor row-major B). Default from PYKERNELS_GEMM_DIRECT; settable for tests.
int gemm_direct_mode();
void set_gemm_direct_mode(int mode);
// Use the OpenMP runtime already loaded in the process (torch's) instead of the private pool.
bool attach_host_openmp();
const char* thread_backend();  // "host-openmp" or "pool"
// Runs fn(task, thread) for task in [0, n_tasks); thread in [0, num_threads()).
// Reentrant: if another Python thread is using the pool, the caller runs every task itself.
void parallel_for(int64_t n_tasks, const std::function<void(int64_t, int)>& fn);

// ---- memory (memory.cpp) -----------------------------------------------------------------
// Asks for transparent huge pages on [p, p + bytes) before a kernel first writes it; nothing
// under 16 MiB or with PYKERNELS_THP=0 (see memory.cpp).
void prefer_huge_pages(const void* p, int64_t bytes);
// The block cache (see memory.cpp): a block of at least `bytes` (its true size in .bytes), and
// back; cache_empty frees the free blocks and returns their bytes. Thread-safe.
struct CacheBlock {
  void* p;
  size_t bytes;
};
CacheBlock cache_acquire(size_t bytes);
void cache_release(CacheBlock b);
size_t cache_empty();
size_t cache_cached_bytes();
void cache_poison();  // NaN into every free block (for tests)

// The ISA path chosen at import ("avx512", "avx2" or "generic"); per-op binding files
// (e.g. pool2d_bind.cpp) dispatch on it with PK_ISA_CALL.
const char* active_isa();
#if defined(__x86_64__) || defined(__i386__)
#define PK_ISA_CALL(FN, ...)                                                     \
  (std::string(::pk::active_isa()) == "avx512" ? ::pk::avx512::FN(__VA_ARGS__)   \
   : std::string(::pk::active_isa()) == "avx2" ? ::pk::avx2::FN(__VA_ARGS__)     \
                                               : ::pk::generic::FN(__VA_ARGS__))
#else
#define PK_ISA_CALL(FN, ...) ::pk::generic::FN(__VA_ARGS__)
#endif

// ---- per-ISA entry points (gemm.cpp, peak.cpp compiled three times) -------------------------
#define PK_DECLARE_ISA(NS)                                               \
  namespace NS {                                                         \
  void gemm_forward(const GemmArgs<float>& args);                        \
  void gemm_forward(const GemmArgs<double>& args);                       \
  void gemm_backward(const EpilogueBwdArgs<float>& args);                \
  void gemm_backward(const EpilogueBwdArgs<double>& args);               \
  double fma_peak_gflops(int threads, bool fp64);                        \
  }

PK_DECLARE_ISA(avx512)
PK_DECLARE_ISA(avx2)
PK_DECLARE_ISA(generic)

// ---- pool2d (pool2d.cpp, compiled once per ISA; bound in pool2d_bind.cpp) ---------------------
// Window of a pooling op. adaptive: windows [floor(i*H/OH), ceil((i+1)*H/OH)) and the
// k/s/p/d fields are unused. divisor_override 0 = none (avg only).
struct PoolWindow {
  int kH, kW, sH, sW, pH, pW, dH, dW;
  bool adaptive;
  bool count_include_pad;
  int64_t divisor_override;
};

// input [N, C, H, W], output [N, C, OH, OW]; strides in elements, in the order n, c, h, w.
// Forward: in = x (read), out = out (written), idx = max indices (written; nullptr = skip).
// Backward: in = grad_in (fully written), out = grad_out (read), idx = max indices (read).
// idx holds int64 (torch's indices), or int32 when idx32 (indices the ops layer keeps only for
// its own backward: half the bytes).
template <typename T>
struct Pool2dArgs {
  int64_t N, C, H, W, OH, OW;
  T* in; int64_t s_in[4];
  T* out; int64_t s_out[4];
  void* idx; int64_t s_idx[4];
  bool idx32;
  PoolWindow win;
};

#define PK_DECLARE_POOL2D(NS)                                       \
  namespace NS {                                                    \
  void max_pool2d_forward(const Pool2dArgs<float>& a);              \
  void max_pool2d_forward(const Pool2dArgs<double>& a);             \
  void max_pool2d_backward(const Pool2dArgs<float>& a);             \
  void max_pool2d_backward(const Pool2dArgs<double>& a);            \
  void avg_pool2d_forward(const Pool2dArgs<float>& a);              \
  void avg_pool2d_forward(const Pool2dArgs<double>& a);             \
  void avg_pool2d_backward(const Pool2dArgs<float>& a);             \
  void avg_pool2d_backward(const Pool2dArgs<double>& a);            \
  }

PK_DECLARE_POOL2D(avx512)
PK_DECLARE_POOL2D(avx2)
PK_DECLARE_POOL2D(generic)
// ---- end pool2d ------------------------------------------------------------------------------

// ---- conv2d (conv2d.cpp, compiled once per ISA; bound in conv2d_bind.cpp) -------------------
// Geometry of the forward convolution: x [N, C, H, W], weight [K, C/groups, R, S],
// y [N, K, OH, OW]; stride sH, sW, top/left padding pH, pW, dilation dH, dW. Strides in elements
// (n, c, h, w for images; k, c, r, s for the weight). Roles per pass:
//   forward:          reads x, w (+ bias[K]);  writes y = act(conv + bias) (+ preact = conv + bias)
//   backward_input:   reads y (= grad_out), w (+ bias[C]);  writes x (= grad_in, every element)
//   backward_weight:  reads y (= grad_out), x;  writes w (= grad_weight, every element)
template <typename T>
struct ConvArgs {
  int64_t N, C, H, W, K, R, S, OH, OW, groups, sH, sW, pH, pW, dH, dW;
  T* x; int64_t sx[4];
  T* w; int64_t sw[4];
  T* y; int64_t sy[4];
  const T* bias; int64_t s_bias;
  Act act;
  T* preact; int64_t sp[4];
};

// dz = dy * act'(saved) (dz == nullptr allowed for act None), dbias[k] = sum_{n,h,w} dz (or dy).
template <typename T>
struct ConvBiasGradArgs {
  int64_t N, K, OH, OW;
  const T* dy; int64_t sdy[4];
  const T* saved; int64_t ss[4];
  Act act;
  T* dz; int64_t sdz[4];
  T* dbias; int64_t s_dbias;
};

#define PK_DECLARE_CONV2D(NS)                                        \
  namespace NS {                                                     \
  void conv2d_forward(const ConvArgs<float>& a);                     \
  void conv2d_forward(const ConvArgs<double>& a);                    \
  void conv2d_backward_input(const ConvArgs<float>& a);              \
  void conv2d_backward_input(const ConvArgs<double>& a);             \
  void conv2d_backward_weight(const ConvArgs<float>& a);             \
  void conv2d_backward_weight(const ConvArgs<double>& a);            \
  void conv2d_backward_bias(const ConvBiasGradArgs<float>& a);       \
  void conv2d_backward_bias(const ConvBiasGradArgs<double>& a);      \
  }

PK_DECLARE_CONV2D(avx512)
PK_DECLARE_CONV2D(avx2)
PK_DECLARE_CONV2D(generic)
// ---- end conv2d ------------------------------------------------------------------------------


// ---- attention (attention.cpp, compiled once per ISA; bound in attention_bind.cpp) -----------
// out = softmax(scale * q k^T + mask) v per (batch b, head h), FlashAttention-2 style (no N x S
// buffer). q [B, H, N, D], k [B, H, S, D], v [B, H, S, Dv], out/dout [B, H, N, Dv]; strides in
// elements in the order b, h, row, column. mask_kind 0 none, 1 bool bytes (nonzero = attend),
// 2 additive of type T; sm = its strides over (b, h, i, j), 0 on broadcast dims. causal: query i
// attends key j only if j <= i. dropout_p > 0: the Philox keep rule of ops/attention.py, keyed by
// seed and the element's index ((b*H + h)*N + i)*S + j. lse [B, H, N] (natural log, -inf for a
// fully masked row). Forward writes out and lse; backward writes dq, dk, dv (every element) and,
// when dmask != nullptr, dmask [B, H, N, S] = dS.
template <typename T>
struct AttnArgs {
  int64_t B, H, N, S, D, Dv;
  const T* q; int64_t sq[4];
  const T* k; int64_t sk[4];
  const T* v; int64_t sv[4];
  const void* mask; int mask_kind; int64_t sm[4];
  bool causal; double scale; double dropout_p; uint64_t seed;
  T* out; int64_t so[4];
  T* lse; int64_t sl[3];
  const T* dout; int64_t sdo[4];
  T* dq; int64_t sdq[4];
  T* dk; int64_t sdk[4];
  T* dv; int64_t sdv[4];
  T* dmask; int64_t sdm[4];
};

#define PK_DECLARE_ATTENTION(NS)                                   \
  namespace NS {                                                   \
  void attention_forward(const AttnArgs<float>& a);                \
  void attention_forward(const AttnArgs<double>& a);               \
  void attention_backward(const AttnArgs<float>& a);               \
  void attention_backward(const AttnArgs<double>& a);              \
  }

PK_DECLARE_ATTENTION(avx512)
PK_DECLARE_ATTENTION(avx2)
PK_DECLARE_ATTENTION(generic)
// ---- end attention ---------------------------------------------------------------------------


// ---- rnn (rnn.cpp, compiled once per ISA; bound in rnn_bind.cpp) -----------------------------
// One LSTM (kind 0, gates i, f, g, o) or GRU (kind 1, gates r, z, n) layer in one direction over a
// whole sequence, torch.nn.LSTM/GRU's equations. x [T, B, I], h0/c0 [B, H] (nullptr = zeros),
// w_ih [G*H, I], w_hh [G*H, H], b_ih/b_hh [G*H] (nullptr = none), y [T, B, H], hn/cn [B, H];
// strides in elements (T = steps). reverse walks t = T-1 .. 0. batch_sizes (int64 [T], non-increasing, or
// nullptr): at time t only rows b < batch_sizes[t] are updated (PackedSequence), the others keep
// their state and get y = 0. ws: T*B*6*H (LSTM) / T*B*5*H (GRU) elements written by the forward
// for the backward (nullptr in the forward: nothing saved). The backward writes every non-null
// gradient (dx [T, B, I], dh0/dc0 [B, H], dw_ih, dw_hh, db_ih, db_hh) for the incoming dy
// (nullptr = 0), dhn, dcn (nullptr = 0).
template <typename T>
struct RnnArgs {
  int kind;
  int64_t steps, B, I, H;  // steps = T, the sequence length
  bool reverse;
  const T* x; int64_t sx[3];
  const T* h0; int64_t sh0[2];
  const T* c0; int64_t sc0[2];
  const T* w_ih; int64_t swi[2];
  const T* w_hh; int64_t swh[2];
  const T* b_ih; int64_t sbi;
  const T* b_hh; int64_t sbh;
  const int64_t* batch_sizes;
  T* y; int64_t sy[3];
  T* hn; int64_t shn[2];
  T* cn; int64_t scn[2];
  T* ws;
  const T* dy; int64_t sdy[3];
  const T* dhn; int64_t sdhn[2];
  const T* dcn; int64_t sdcn[2];
  T* dx; int64_t sdx[3];
  T* dh0; int64_t sdh0[2];
  T* dc0; int64_t sdc0[2];
  T* dw_ih; int64_t sdwi[2];
  T* dw_hh; int64_t sdwh[2];
  T* db_ih; int64_t sdbi;
  T* db_hh; int64_t sdbh;
};

inline int64_t rnn_workspace_elems(int kind, int64_t T, int64_t B, int64_t H) {
  return T * B * H * (kind == 0 ? 6 : 5);
}

#define PK_DECLARE_RNN(NS)                                   \
  namespace NS {                                             \
  void rnn_forward(const RnnArgs<float>& a);                 \
  void rnn_forward(const RnnArgs<double>& a);                \
  void rnn_backward(const RnnArgs<float>& a);                \
  void rnn_backward(const RnnArgs<double>& a);               \
  }

PK_DECLARE_RNN(avx512)
PK_DECLARE_RNN(avx2)
PK_DECLARE_RNN(generic)
// ---- end rnn ---------------------------------------------------------------------------------

}  // namespace pk
