// Host memory for the CPU kernels (compiled once, not per ISA): a cache of large blocks, and the
// huge-page hint.
//
// Why: buffers of 16 MiB and more come straight from mmap (glibc's threshold is at most 32 MiB),
// so every call faults them in page by page, measured here (a VM) at ~0.5 ms per MiB: an LSTM
// layer's 78 MB workspace cost ~45 ms per forward, a fifth of the forward's own work, and its
// 52 MB of gate gradients another 29 ms per backward. torch's own RNN keeps per-step tensors
// small enough for glibc to recycle; pykernels keeps its big blocks instead.
//
// The block cache: cache_acquire(bytes) hands out a block of at least `bytes` (rounded up to
// 2 MiB), reusing a free cached one of at most 1.5x the size when there is one; cache_release
// gives it back. Free blocks are kept up to PYKERNELS_CACHE_MB (default 1024) in all; a block
// released past that is freed at once. cache_empty() frees every free block (pykernels.empty_cache());
// cache_poison() fills them with NaN (tests: a kernel must not read what it did not write).
// Thread-safe (one mutex, held only for a map lookup or insert; blocks are released from whatever
// thread frees the tensor holding one). A forked child inherits the free blocks and keeps using
// them. (A pthread_atfork handler that gave the child a fresh mutex was removed when spawned DDP
// workers aborted in tests/test_distributed.py; those aborts later turned out to be torch's own
// exit-time teardown, seen without pykernels too: see that test's docstring.)
// Fresh blocks get MADV_HUGEPAGE (kept blocks then also cost fewer TLB misses).
//
// prefer_huge_pages: before a kernel first writes a buffer of 16 MiB or more that torch allocated,
// it asks for transparent huge pages on it (a hint, a no-op where THP is off; torch's own allocator
// does the same with THP_MEM_ALLOC_ENABLE=1). PYKERNELS_THP=0 turns both hints off.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>

#include <sys/mman.h>
#include <unistd.h>

#include "common.h"

namespace pk {
namespace {

constexpr size_t kBlockAlign = size_t(2) << 20;

bool thp_enabled() {
  static const bool on = [] {
    const char* e = std::getenv("PYKERNELS_THP");
    return !(e && e[0] == '0');
  }();
  return on;
}

void advise_huge(const void* p, size_t bytes) {
#if defined(MADV_HUGEPAGE)
  static const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  if (!thp_enabled() || p == nullptr) return;
  const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
  const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes)) & ~(page - 1);
  if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
#endif
}

struct BlockCache {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;  // size -> block
  size_t cached = 0;                         // bytes in free_blocks
  size_t cap = [] {
    const char* e = std::getenv("PYKERNELS_CACHE_MB");
    const long mb = e ? std::atol(e) : 1024;
    return size_t(mb > 0 ? mb : 0) << 20;
  }();
};

BlockCache& cache() {
  static BlockCache* c = new BlockCache;  // never destroyed: tensors may release blocks at exit
  return *c;
}

}  // namespace

void prefer_huge_pages(const void* p, int64_t bytes) {
  if (bytes >= (int64_t(16) << 20)) advise_huge(p, size_t(bytes));
}

CacheBlock cache_acquire(size_t bytes) {
  if (bytes > (size_t(1) << 60)) throw std::bad_alloc();  // the rounding below must not wrap
  const size_t want = (std::max<size_t>(bytes, 1) + kBlockAlign - 1) / kBlockAlign * kBlockAlign;
  BlockCache& c = cache();
  {
    std::lock_guard<std::mutex> lk(c.mu);
    auto it = c.free_blocks.lower_bound(want);
    if (it != c.free_blocks.end() && it->first <= want + want / 2) {
      CacheBlock b{it->second, it->first};
      c.cached -= it->first;
      c.free_blocks.erase(it);
      return b;
    }
  }
  void* p = std::aligned_alloc(kBlockAlign, want);
  if (!p) throw std::bad_alloc();
  advise_huge(p, want);
  return CacheBlock{p, want};
}

void cache_release(CacheBlock b) {
  if (!b.p) return;
  BlockCache& c = cache();
  {
    std::lock_guard<std::mutex> lk(c.mu);
    if (c.cached + b.bytes <= c.cap) {
      c.free_blocks.emplace(b.bytes, b.p);
      c.cached += b.bytes;
      return;
    }
  }
  std::free(b.p);
}

size_t cache_empty() {
  BlockCache& c = cache();
  std::multimap<size_t, void*> blocks;
  size_t freed;
  {
    std::lock_guard<std::mutex> lk(c.mu);
    blocks.swap(c.free_blocks);
    freed = c.cached;
    c.cached = 0;
  }
  for (auto& kv : blocks) std::free(kv.second);
  return freed;
}

void cache_poison() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  for (auto& kv : c.free_blocks) std::memset(kv.second, 0xFF, kv.first);  // all-ones bytes: NaN
}

size_t cache_cached_bytes() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lk(c.mu);
  return c.cached;
}

}  // namespace pk
