// Host shim: compile upbench's unchanged .cu kernel sources with g++ (DESIGN.md §7).
//
// Include this before a .cu file. It defines the CUDA keywords, dim3 and thread-local
// blockIdx/threadIdx/blockDim/gridDim, and turns every UPB_ENTRY kernel into an extern "C" host function
// `NAME(const long long* cfg, params...)` where cfg = {grid.x, grid.y, grid.z, block.x, block.y, block.z,
// omp_threads}. Two launch models:
//   UPB_LANES == 1  (fast): blocks run in an OpenMP loop, the threads of a block one after another. Valid
//                   for kernels whose threads never wait for each other, which is what one-lane warps give.
//   UPB_LANES == 32 (SIMT): blocks run one at a time, each CUDA thread on its own OS thread, so warp
//                   shuffles and __syncwarp work (through a per-warp exchange buffer and barrier). Slow:
//                   tiny shapes only. A lane that skips a collective shows up as a reported deadlock.
#pragma once

#ifndef UPB_LANES
#define UPB_LANES 1
#endif

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

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

template <class F>
void upb_launch(const long long* cfg, F&& body) {
  const dim3 g{(unsigned)cfg[0], (unsigned)cfg[1], (unsigned)cfg[2]};
  const dim3 b{(unsigned)cfg[3], (unsigned)cfg[4], (unsigned)cfg[5]};
  const long long nblocks = (long long)g.x * g.y * g.z;
  const int nthreads = (int)cfg[6];
#pragma omp parallel for schedule(static) num_threads(nthreads)
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

#else  // SIMT emulation

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#define __shared__ static  // blocks run one at a time, so one copy per kernel instantiation is per-block

struct UpbWarp {
  std::atomic<int> arrived{0};
  std::atomic<long long> generation{0};
  unsigned long long slot[UPB_LANES];

  // Spin-yield barrier over the warp's lanes (condition variables made the tests ~4× slower).
  void barrier() {
    const long long gen = generation.load(std::memory_order_acquire);
    if (arrived.fetch_add(1, std::memory_order_acq_rel) + 1 == UPB_LANES) {
      arrived.store(0, std::memory_order_relaxed);
      generation.fetch_add(1, std::memory_order_acq_rel);
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    while (generation.load(std::memory_order_acquire) == gen) {
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
  std::memcpy(&w.slot[lane], &v, sizeof(T));
  w.barrier();
  T r;
  std::memcpy(&r, &w.slot[src & (UPB_LANES - 1)], sizeof(T));
  w.barrier();
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
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < nthreads; ++t) {
      threads.emplace_back([&, t, blk] {
        gridDim = g;
        blockDim = b;
        blockIdx = dim3{(unsigned)(blk % g.x), (unsigned)(blk / g.x % g.y), (unsigned)(blk / ((long long)g.x * g.y))};
        threadIdx = dim3{t, 0, 0};
        upb_warp = &warps[t / UPB_LANES];
        body();
      });
    }
    for (auto& th : threads) th.join();
  }
}

#endif

#define UPB_ENTRY(NAME, PARAMS, ...)                                 \
  extern "C" void NAME(const long long* upb_cfg, UPB_UNPAREN PARAMS) { \
    upb_launch(upb_cfg, [&]() { __VA_ARGS__; });                     \
  }
