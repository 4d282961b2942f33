// Host shim: compile upbench's unchanged .cu kernel sources with g++ (DESIGN.md §7).
//
// Include this before a .cu file. It defines the CUDA keywords, dim3 and thread-local
// blockIdx/threadIdx/blockDim/gridDim, and turns every UPB_ENTRY kernel into an extern "C" host function
// `NAME(const long long* cfg, params...)` where cfg = {grid.x, grid.y, grid.z, block.x, block.y, block.z,
// omp_threads, ftz, seed}. Three launch models:
//   UPB_LANES == 1  (fast): blocks run in an OpenMP loop, the threads of a block one after another. Valid
//                   for kernels whose threads never wait for each other, which is what one-lane warps give.
//   UPB_LANES == 32 (SIMT): blocks run one at a time, each CUDA thread on its own OS thread, so warp
//                   shuffles and __syncwarp work (through a per-warp exchange buffer and barrier). Slow:
//                   tiny shapes only. A lane that skips a collective shows up as a reported deadlock.
//   UPB_WEAK        (SIMT under a weak memory model, no kinder than a GPU): each thread sees shared memory
//                   through a private view; its writes reach other threads only at a barrier that orders
//                   them (__syncwarp: its warp, __syncthreads: the block), which publishes them. Threads run
//                   one at a time, in a seeded random order between synchronisation points; shuffles
//                   exchange values but publish nothing; shared memory starts as a poison pattern (NaN for
//                   every float type); blocks run in a random order. Two threads writing one shared byte
//                   between barriers is reported as a race. A kernel that relies on a missing barrier reads
//                   poison or stale values and fails its reference check.
// ftz (cfg[6+1]): run in the GPU build's float mode (nvcc/NVRTC -ftz=true): x86 MXCSR FTZ+DAZ flush fp32
// subnormal inputs and results to zero. The caller turns it off for float64 entries (the GPU never flushes
// fp64; MXCSR would).
#pragma once

#ifndef UPB_LANES
#define UPB_LANES 1
#endif

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

// The float mode of one launch on the calling thread (MXCSR is per thread), restored on scope exit.
struct UpbFloatMode {
#if defined(__SSE__)
  unsigned old;
  explicit UpbFloatMode(long long ftz) : old(_mm_getcsr()) {
    if (ftz) _mm_setcsr(old | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
  }
  ~UpbFloatMode() { _mm_setcsr(old); }
#else
  explicit UpbFloatMode(long long) {}  // no FTZ emulation on this CPU: subnormals survive (documented)
#endif
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 blockIdx, threadIdx, blockDim, gridDim;

#if UPB_LANES == 1

#include <vector>

// A per-thread host buffer of at least n elements, kept (grown only) across calls: CPU fast-build kernels that
// pack rows into contiguous scratch (window_attn.cu, fused_packed).
template <typename T>
T* upb_host_scratch(long long n) {
  static thread_local std::vector<T> buf;
  if ((long long)buf.size() < n) buf.resize((size_t)n);
  return buf.data();
}

template <class F>
void upb_launch(const long long* cfg, F&& body) {
  const dim3 g{(unsigned)cfg[0], (unsigned)cfg[1], (unsigned)cfg[2]};
  const dim3 b{(unsigned)cfg[3], (unsigned)cfg[4], (unsigned)cfg[5]};
  const long long nblocks = (long long)g.x * g.y * g.z;
  const int nthreads = (int)cfg[6];
#pragma omp parallel num_threads(nthreads)
  {
  const UpbFloatMode fm(cfg[7]);
#pragma omp for schedule(static)
  for (long long blk = 0; blk < nblocks; ++blk) {
    gridDim = g;
    blockDim = b;
    blockIdx = dim3{(unsigned)(blk % g.x), (unsigned)(blk / g.x % g.y), (unsigned)(blk / ((long long)g.x * g.y))};
    for (unsigned tz = 0; tz < b.z; ++tz)
      for (unsigned ty = 0; ty < b.y; ++ty)
        for (unsigned tx = 0; tx < b.x; ++tx) {
          threadIdx = dim3{tx, ty, tz};
          body();
        }
  }
  }
}

#elif !defined(UPB_WEAK)  // SIMT emulation

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#define __shared__ static  // blocks run one at a time, so one copy per kernel instantiation is per-block
// UPB_RACE (built with -fsanitize=thread): shuffles exchange values without ordering memory, as on a GPU, so
// ThreadSanitizer reports any shared-memory access pair that only a shuffle separates (a missing barrier).
#ifdef UPB_RACE
#define UPB_SHFL_ORDER true
#else
#define UPB_SHFL_ORDER false
#endif

struct UpbWarp {
  std::atomic<int> arrived{0};
  std::atomic<long long> generation{0};
  std::atomic<unsigned long long> slot[UPB_LANES];

  // Spin-yield barrier over the warp's lanes (condition variables made the tests ~4× slower). relaxed: the
  // lanes wait for each other but no memory is ordered (how UPB_RACE builds model shuffles).
  void barrier() { barrier_n(UPB_LANES); }
  void barrier_n(unsigned n, bool relaxed = false) {
    const auto acq = relaxed ? std::memory_order_relaxed : std::memory_order_acquire;
    const auto ar = relaxed ? std::memory_order_relaxed : std::memory_order_acq_rel;
    const long long gen = generation.load(acq);
    if (arrived.fetch_add(1, ar) + 1 == (int)n) {
      arrived.store(0, std::memory_order_relaxed);
      generation.fetch_add(1, ar);
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    while (generation.load(acq) == gen) {
      std::this_thread::yield();
      if (std::chrono::steady_clock::now() - start > std::chrono::seconds(20)) {
        std::fprintf(stderr, "cpu_shim: warp barrier timed out: a lane skipped a shuffle or __syncwarp\n");
        std::abort();
      }
    }
  }
};

inline thread_local UpbWarp* upb_warp = nullptr;

template <class T>
T upb_exchange(T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  UpbWarp& w = *upb_warp;
  const int lane = threadIdx.x % UPB_LANES;
  unsigned long long bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  w.slot[lane].store(bits, std::memory_order_relaxed);
  w.barrier_n(UPB_LANES, UPB_SHFL_ORDER);
  T r;
  bits = w.slot[src & (UPB_LANES - 1)].load(std::memory_order_relaxed);
  std::memcpy(&r, &bits, sizeof(T));
  w.barrier_n(UPB_LANES, UPB_SHFL_ORDER);
  return r;
}

template <class T>
T __shfl_sync(unsigned mask, T v, int src) {
  if (mask != 0xffffffffu) std::abort();  // the kernels only use full-warp shuffles
  return upb_exchange(v, src);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  if (mask != 0xffffffffu) std::abort();
  return upb_exchange(v, (int)(threadIdx.x % UPB_LANES) ^ lane_mask);
}
inline void __syncwarp(unsigned = 0xffffffffu) { upb_warp->barrier(); }
inline thread_local UpbWarp* upb_block_bar = nullptr;  // the block barrier: a "warp" of all the block's threads
inline void __syncthreads() { upb_block_bar->barrier_n(blockDim.x); }

template <class F>
void upb_launch(const long long* cfg, F&& body) {
  const dim3 g{(unsigned)cfg[0], (unsigned)cfg[1], (unsigned)cfg[2]};
  const dim3 b{(unsigned)cfg[3], (unsigned)cfg[4], (unsigned)cfg[5]};
  const unsigned nthreads = b.x * b.y * b.z;
  if (b.y != 1 || b.z != 1 || nthreads % UPB_LANES != 0) {
    std::fprintf(stderr, "cpu_shim: SIMT launch needs blockDim = (32·n, 1, 1)\n");
    std::abort();
  }
  for (long long blk = 0; blk < (long long)g.x * g.y * g.z; ++blk) {
    std::vector<UpbWarp> warps(nthreads / UPB_LANES);
    UpbWarp block_bar;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < nthreads; ++t) {
      threads.emplace_back([&, t, blk] {
        const UpbFloatMode fm(cfg[7]);
        gridDim = g;
        blockDim = b;
        blockIdx = dim3{(unsigned)(blk % g.x), (unsigned)(blk / g.x % g.y), (unsigned)(blk / ((long long)g.x * g.y))};
        threadIdx = dim3{t, 0, 0};
        upb_warp = &warps[t / UPB_LANES];
        upb_block_bar = &block_bar;
        body();
      });
    }
    for (auto& th : threads) th.join();
  }
}

#else  // UPB_WEAK: SIMT under a weak memory model (see the top of this file)

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

// Shared memory is only reachable through UPB_WARP_SCRATCH (upb_common.cuh), which takes it from the
// thread's view below; a bare __shared__ declaration would bypass the model, so it does not compile here.
#define __shared__ upb_weak_mode_needs_UPB_WARP_SCRATCH_for_shared_memory
#define UPB_WARP_SCRATCH(T, name, n) T* name = upb_scratch<T>((long long)UPB_WARPS * (n)) + (threadIdx.x / UPB_LANES) * (n)

constexpr long long UPB_SMEM_BYTES = 48 * 1024;  // a block's static shared memory limit on the GPU
constexpr unsigned char UPB_POISON = 0xff;       // all-ones: NaN as f16, bf16, f32 and f64

struct UpbBlock {
  unsigned n = 0;  // threads
  std::mutex mu;
  std::vector<std::condition_variable> cv;  // one per thread: hand the turn to exactly one
  int running = -1;
  std::vector<char> ready, alive;
  std::mt19937_64 rng;
  std::vector<unsigned char> committed;             // what a barrier has published
  std::vector<std::vector<unsigned char>> mine, snap;  // each thread's view, and the view at its last barrier
  long long used = 0;
  std::vector<int> arrived;        // per warp, and [nwarps] for the block barrier
  std::vector<long long> gen;      // per warp: synchronisation points passed (shuffles and barriers)
  std::vector<unsigned long long> slot;  // [warp][parity][lane] shuffle values

  void init(unsigned threads, unsigned long long seed) {
    n = threads;
    cv = std::vector<std::condition_variable>(n);
    running = -1;
    ready.assign(n, 1);
    alive.assign(n, 1);
    rng.seed(seed);
    committed.assign(UPB_SMEM_BYTES, UPB_POISON);
    mine.assign(n, committed);
    snap.assign(n, committed);
    used = 0;
    arrived.assign(n / UPB_LANES + 1, 0);
    gen.assign(n / UPB_LANES, 0);
    slot.assign((n / UPB_LANES) * 2 * UPB_LANES, 0);
  }

  // With mu held: give the turn to a random ready thread.
  void schedule() {
    std::vector<int> cand;
    for (unsigned t = 0; t < n; ++t)
      if (ready[t]) cand.push_back((int)t);
    if (cand.empty()) {
      if (std::find(alive.begin(), alive.end(), 1) != alive.end()) {
        std::fprintf(stderr, "cpu_shim (weak): deadlock: a thread skipped a shuffle, __syncwarp or __syncthreads\n");
        std::abort();
      }
      running = -1;
      return;
    }
    running = cand[std::uniform_int_distribution<size_t>(0, cand.size() - 1)(rng)];
    cv[running].notify_one();
  }
  void wait_turn(std::unique_lock<std::mutex>& lk, int t) {
    cv[t].wait(lk, [&] { return running == t; });
  }

  // Publish the shared-memory writes of threads [lo, hi) since their last barrier, then refresh their views.
  void publish(unsigned lo, unsigned hi) {
    std::vector<int> writer(used, -1);
    for (unsigned t = lo; t < hi; ++t) {
      const unsigned char* m = mine[t].data();
      const unsigned char* sn = snap[t].data();
      for (long long i = 0; i < used; ++i) {
        if (m[i] == sn[i]) continue;
        if (writer[i] >= 0 && committed[i] != m[i]) {
          std::fprintf(stderr, "cpu_shim (weak): shared-memory race: threads %d and %u wrote byte %lld with no barrier "
                       "between them\n", writer[i], t, i);
          std::abort();
        }
        committed[i] = m[i];
        writer[i] = (int)t;
      }
    }
    for (unsigned t = lo; t < hi; ++t) {
      std::memcpy(mine[t].data(), committed.data(), used);
      std::memcpy(snap[t].data(), committed.data(), used);
    }
  }

  // Thread t reaches a synchronisation point of its warp (or, block=true, of the block). fence: a barrier
  // that publishes shared memory; a shuffle only waits for its lanes.
  void sync(int t, bool block, bool fence) {
    std::unique_lock<std::mutex> lk(mu);
    const unsigned w = (unsigned)t / UPB_LANES;
    const unsigned idx = block ? (unsigned)gen.size() : w;
    const unsigned lo = block ? 0 : w * UPB_LANES, hi = block ? n : lo + UPB_LANES;
    ready[t] = 0;
    if ((unsigned)++arrived[idx] == hi - lo) {
      arrived[idx] = 0;
      if (fence) publish(lo, hi);
      for (unsigned u = lo; u < hi; ++u) ready[u] = 1;
      for (unsigned ww = lo / UPB_LANES; ww < hi / UPB_LANES; ++ww) ++gen[ww];
    }
    schedule();
    wait_turn(lk, t);
  }
};

inline thread_local UpbBlock* upb_blk = nullptr;
inline thread_local int upb_tid = 0;
inline thread_local long long upb_smem_off = 0;

template <class T>
T* upb_scratch(long long count) {
  UpbBlock& b = *upb_blk;
  const long long off = (upb_smem_off + 15) & ~15LL, end = off + count * (long long)sizeof(T);
  if (end > UPB_SMEM_BYTES) {
    std::fprintf(stderr, "cpu_shim (weak): %lld bytes of shared memory exceed the GPU's %lld per block\n", end,
                 UPB_SMEM_BYTES);
    std::abort();
  }
  upb_smem_off = end;
  b.used = std::max(b.used, end);
  return reinterpret_cast<T*>(b.mine[upb_tid].data() + off);
}

template <class T>
T upb_exchange(T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  UpbBlock& b = *upb_blk;
  const int lane = upb_tid % UPB_LANES, w = upb_tid / UPB_LANES;
  unsigned long long* slots = &b.slot[(size_t)w * 2 * UPB_LANES];
  const int par = (int)(b.gen[w] & 1);  // a lane is at most one synchronisation point ahead of another
  unsigned long long bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  slots[par * UPB_LANES + lane] = bits;
  b.sync(upb_tid, false, false);
  T r;
  std::memcpy(&r, &slots[par * UPB_LANES + (src & (UPB_LANES - 1))], sizeof(T));
  return r;
}

template <class T>
T __shfl_sync(unsigned mask, T v, int src) {
  if (mask != 0xffffffffu) std::abort();  // the kernels only use full-warp shuffles
  return upb_exchange(v, src);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  if (mask != 0xffffffffu) std::abort();
  return upb_exchange(v, (int)(threadIdx.x % UPB_LANES) ^ lane_mask);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) std::abort();
  upb_blk->sync(upb_tid, false, true);
}
inline void __syncthreads() { upb_blk->sync(upb_tid, true, true); }

template <class F>
void upb_launch(const long long* cfg, F&& body) {
  const dim3 g{(unsigned)cfg[0], (unsigned)cfg[1], (unsigned)cfg[2]};
  const dim3 b{(unsigned)cfg[3], (unsigned)cfg[4], (unsigned)cfg[5]};
  const unsigned nthreads = b.x * b.y * b.z;
  if (b.y != 1 || b.z != 1 || nthreads % UPB_LANES != 0) {
    std::fprintf(stderr, "cpu_shim: SIMT launch needs blockDim = (32·n, 1, 1)\n");
    std::abort();
  }
  static std::atomic<unsigned long long> launches{0};
  std::mt19937_64 order_rng((unsigned long long)cfg[8] * 0x9e3779b97f4a7c15ull + launches++);
  std::vector<long long> blocks((long long)g.x * g.y * g.z);
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = (long long)i;
  std::shuffle(blocks.begin(), blocks.end(), order_rng);  // blocks in a random order
  UpbBlock state;
  for (const long long blk : blocks) {
    state.init(nthreads, order_rng());
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < nthreads; ++t) {
      threads.emplace_back([&, t, blk] {
        const UpbFloatMode fm(cfg[7]);
        gridDim = g;
        blockDim = b;
        blockIdx = dim3{(unsigned)(blk % g.x), (unsigned)(blk / g.x % g.y), (unsigned)(blk / ((long long)g.x * g.y))};
        threadIdx = dim3{t, 0, 0};
        upb_blk = &state;
        upb_tid = (int)t;
        upb_smem_off = 0;
        {
          std::unique_lock<std::mutex> lk(state.mu);
          state.wait_turn(lk, (int)t);
        }
        body();
        std::unique_lock<std::mutex> lk(state.mu);
        state.ready[t] = 0;
        state.alive[t] = 0;
        state.schedule();
      });
    }
    {
      std::unique_lock<std::mutex> lk(state.mu);
      state.schedule();
    }
    for (auto& th : threads) th.join();
  }
}

#endif

#define UPB_ENTRY(NAME, PARAMS, ...)                                 \
  extern "C" void NAME(const long long* upb_cfg, UPB_UNPAREN PARAMS) { \
    upb_launch(upb_cfg, [&]() { __VA_ARGS__; });                     \
  }
