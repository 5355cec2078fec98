// Threads for the CPU kernels.
//
// Preferred: the OpenMP runtime torch itself uses. torch's wheel loads its libgomp globally, so
// after `import torch` GOMP_parallel is found with dlsym(RTLD_DEFAULT); running our parallel
// regions on torch's own OpenMP team means one set of worker threads for both libraries. A
// second pool would fight it: libgomp's idle workers spin for milliseconds after every torch
// op, and measured here a 1024^3 GEMM right after a torch matmul took 19.5 ms instead of 12.5 ms
// with a private pool. `attach_host_openmp()` (called by pykernels/__init__.py) looks it up;
// PYKERNELS_THREADS=pool keeps the private pool (for comparison, or a torch without libgomp).
//
// Fallback: a small persistent pool. num_threads() - 1 workers plus the calling thread. A job is a task count and a
// function; tasks are claimed with an atomic counter. After a job a worker spins for a short
// while (~50 us) waiting for the next one (back-to-back kernel calls are common), then sleeps on
// a condition variable so it never holds a core while torch runs. One job at a time: a second
// Python thread that finds the pool busy runs its tasks itself (reentrancy without deadlock).
// After fork() the child starts a fresh pool.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <dlfcn.h>
#include <unistd.h>

#include "common.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#else
static inline void cpu_relax() {}
#endif

namespace pk {
namespace {

class Pool {
 public:
  explicit Pool(int n_workers) : owner_pid_(getpid()) {
    for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this, i] { loop(i + 1); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }
  bool owned_by_this_process() const { return owner_pid_ == getpid(); }

  // Caller must hold dispatch_mutex.
  void run(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
    job_ = &fn;
    n_tasks_ = n_tasks;
    next_.store(0, std::memory_order_relaxed);
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(m_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    work(0);
    while (pending_.load(std::memory_order_acquire) > 0) cpu_relax();
    job_ = nullptr;
  }

  std::mutex dispatch_mutex;

 private:
  void work(int tid) {
    for (;;) {
      int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
      if (t >= n_tasks_) break;
      (*job_)(t, tid);
    }
  }
  void loop(int tid) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = gen_.load(std::memory_order_acquire);
      auto t0 = std::chrono::steady_clock::now();
      int spins = 0;
      while (g == seen) {
        cpu_relax();
        g = gen_.load(std::memory_order_acquire);
        if (++spins == 256) {
          spins = 0;
          if (std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(50)) break;
        }
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
        g = gen_.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop_) return;
      work(tid);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }

  pid_t owner_pid_;
  std::vector<std::thread> workers_;
  std::mutex m_;
  std::condition_variable cv_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};
  const std::function<void(int64_t, int)>* job_ = nullptr;
  int64_t n_tasks_ = 0;
  bool stop_ = false;
};

std::mutex g_config_mutex;
std::shared_ptr<Pool> g_pool;
std::atomic<int> g_threads{1};

std::shared_ptr<Pool> get_pool(int threads) {
  std::lock_guard<std::mutex> lk(g_config_mutex);
  if (g_pool && !g_pool->owned_by_this_process()) {
    // Forked child: the parent's worker threads do not exist here. Leak the old object
    // (its threads cannot be joined) and start again.
    new std::shared_ptr<Pool>(std::move(g_pool));
  }
  if (!g_pool || g_pool->size() != threads) g_pool = std::make_shared<Pool>(threads - 1);
  return g_pool;
}

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpThreadNum = int (*)();
std::atomic<GompParallel> g_gomp_parallel{nullptr};
OmpThreadNum g_omp_thread_num = nullptr;

struct GompJob {
  const std::function<void(int64_t, int)>* fn;
  std::atomic<int64_t> next;
  int64_t n_tasks;
};

void gomp_body(void* p) {
  auto* job = static_cast<GompJob*>(p);
  const int tid = g_omp_thread_num ? g_omp_thread_num() : 0;
  for (;;) {
    int64_t t = job->next.fetch_add(1, std::memory_order_relaxed);
    if (t >= job->n_tasks) break;
    (*job->fn)(t, tid);
  }
}

}  // namespace

bool attach_host_openmp() {
  auto par = reinterpret_cast<GompParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
  auto tnum = reinterpret_cast<OmpThreadNum>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"));
  if (!par || !tnum) return false;
  g_omp_thread_num = tnum;
  g_gomp_parallel.store(par);
  return true;
}

const char* thread_backend() { return g_gomp_parallel.load() ? "host-openmp" : "pool"; }

namespace {
std::atomic<int> g_gemm_direct{[] {
  const char* e = std::getenv("PYKERNELS_GEMM_DIRECT");
  return e ? std::atoi(e) : -1;
}()};
}  // namespace

int gemm_direct_mode() { return g_gemm_direct.load(std::memory_order_relaxed); }
void set_gemm_direct_mode(int mode) { g_gemm_direct.store(mode < 0 ? -1 : (mode ? 1 : 0)); }

int num_threads() { return g_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) { g_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

void parallel_for(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
  int threads = num_threads();
  if (n_tasks <= 0) return;
  if (n_tasks == 1 || threads == 1) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  if (GompParallel par = g_gomp_parallel.load(std::memory_order_relaxed)) {
    GompJob job{&fn, {0}, n_tasks};
    par(gomp_body, &job, static_cast<unsigned>(threads), 0);
    return;
  }
  std::shared_ptr<Pool> pool = get_pool(threads);
  std::unique_lock<std::mutex> lk(pool->dispatch_mutex, std::try_to_lock);
  if (!lk.owns_lock()) {  // another thread holds the pool: run here, serially
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
    return;
  }
  pool->run(n_tasks, fn);
}

}  // namespace pk
