// Shared pieces of upbench's kernels: dtypes, loads/stores, the lane model, warp helpers, entry points.
//
// One source serves three builds, chosen by macros set in one place on the Python side:
//   CUDA (NVRTC or nvcc)   UPB_LANES=32: a warp works on one item, its lanes stride over channels.
//   CPU fast (cpu_shim.h)  UPB_LANES=1:  one "thread" per item; channel loops are `omp simd` loops.
//   CPU SIMT (cpu_shim.h)  UPB_LANES=32 with one OS thread per CUDA thread: runs the CUDA lane logic
//                          (shuffles, warp scratch) on the CPU, for tests on tiny shapes.
// No standard headers here: NVRTC compiles this without an include path.
#pragma once

#ifndef UPB_LANES
#define UPB_LANES 32
#endif
#ifndef UPB_WARPS
#define UPB_WARPS 4  // warps per block; the launcher uses blockDim.x = UPB_LANES * UPB_WARPS
#endif
#ifndef UPB_VPT
#define UPB_VPT 8  // channels per lane held in registers by the channel-chunk loops
#endif
#ifndef UPB_VPT_T
#define UPB_VPT_T UPB_VPT  // the same for atn_t, whose items are (pixel, chunk): the CPU build takes wider chunks
#endif
#ifndef UPB_T_SCATTER_BYTES
#define UPB_T_SCATTER_BYTES 0  // > 0: fp32/fp64 atn_t as a scatter over chunks of this many bytes (CPU builds)
#endif
#ifndef UPB_NC
#define UPB_NC 2  // high-res children processed together (each loaded key/value row feeds UPB_NC outputs)
#endif
#ifndef UPB_NC_SIM
#define UPB_NC_SIM UPB_NC  // the same for the unfused sim kernel (the CPU AVX2 build: 4, in groups of 3 slots)
#endif
#define UPB_MAX_K 15  // kernel sizes up to 15 (K² ≤ 225): the per-warp similarity scratch is sized by it
#define UPB_MAX_KK (UPB_MAX_K * UPB_MAX_K)
#define UPB_FULL_MASK 0xffffffffu

// Device-side argument checks, in debug builds only (-DUPB_DEBUG=1: the sanitizer builds, and CUDA builds with
// UPBENCH_KERNEL_DEBUG=1): the bindings validate every launch, this catches a launch that bypassed them.
#if defined(UPB_DEBUG) && UPB_DEBUG
#if defined(__CUDACC__)
#define UPB_DEVICE_CHECK(cond, what) \
  do { if (!(cond)) { printf("upbench kernel: %s\n", what); __trap(); } } while (0)
#else
#define UPB_DEVICE_CHECK(cond, what) \
  do { if (!(cond)) { fprintf(stderr, "upbench kernel: %s\n", what); abort(); } } while (0)
#endif
#else
#define UPB_DEVICE_CHECK(cond, what) ((void)0)
#endif

// A lambda the CPU compiler must inline (GCC otherwise called sims' per-group lambda from the fused kernels: 5 %
// slower); nvcc inlines device lambdas itself.
#if defined(__CUDACC__)
#define UPB_LAMBDA_INLINE
#else
#define UPB_LAMBDA_INLINE __attribute__((always_inline))
#endif

#if defined(__CUDACC__)
#define UPB_SIMD
#define UPB_SIMD_RED(...)
#else
#define UPB_PRAGMA(x) _Pragma(#x)
#define UPB_SIMD UPB_PRAGMA(omp simd)
#define UPB_SIMD_RED(...) UPB_PRAGMA(omp simd reduction(__VA_ARGS__))
#endif

namespace upb {

typedef long long i64;  // every shape and offset is 64-bit

// -- storage types for 16-bit floats: layout-compatible with torch's, no CUDA headers needed ------------
struct f16 { unsigned short x; };
struct bf16 { unsigned short x; };

#if defined(__CUDACC__)
__device__ __forceinline__ unsigned f2u(float f) { return __float_as_uint(f); }
__device__ __forceinline__ float u2f(unsigned u) { return __uint_as_float(u); }
__device__ __forceinline__ float h2f(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ unsigned short f2h(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#else
__device__ __forceinline__ unsigned f2u(float f) { unsigned u; __builtin_memcpy(&u, &f, 4); return u; }
__device__ __forceinline__ float u2f(unsigned u) { float f; __builtin_memcpy(&f, &u, 4); return f; }
// IEEE half <-> float, round to nearest even, subnormals, inf and NaN; branch-free so loops vectorise. No
// step computes with an fp32 subnormal, so both hold in the GPU's float mode (FTZ/DAZ) as cvt does there.
__device__ __forceinline__ float h2f(unsigned short h) {
  const unsigned em = h & 0x7fffu, sign = (unsigned)(h & 0x8000u) << 16;
  const unsigned normal = em >= 0x7c00u ? ((em << 13) | 0x7f800000u) : (em << 13) + 0x38000000u;  // rebias by 112
  const unsigned body = em < 0x400u ? f2u((float)(int)em * 5.9604644775390625e-8f) : normal;  // subnormal: em·2^-24
  return u2f(body | sign);
}
__device__ __forceinline__ unsigned short f2h(float f) {
  unsigned u = f2u(f);
  const unsigned sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  unsigned short o;
  if (u >= 0x47800000u) {  // ≥ 65536 (rounds to inf), inf or NaN
    o = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < 0x38800000u) {  // half subnormal or zero: let float addition do the rounding
    o = (unsigned short)(f2u(u2f(u) + 0.5f) - f2u(0.5f));
  } else {
    const unsigned odd = (u >> 13) & 1u;
    o = (unsigned short)((u + 0xc8000fffu + odd) >> 13);  // rebias by -112 (mod 2^32), round half to even
  }
  return (unsigned short)(o | sign);
}
#endif

__device__ __forceinline__ float bf2f(unsigned short b) { return u2f((unsigned)b << 16); }
__device__ __forceinline__ unsigned short f2bf(float f) {
  const unsigned u = f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((u >> 16) | 0x40u);  // keep NaN quiet
  return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Accumulation type: fp32 for every input dtype except fp64.
template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ double ld(const double* p) { return *p; }
__device__ __forceinline__ float ld(const f16* p) { return h2f(p->x); }
__device__ __forceinline__ float ld(const bf16* p) { return bf2f(p->x); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(double* p, double v) { *p = v; }
__device__ __forceinline__ void st(f16* p, float v) { p->x = f2h(v); }
__device__ __forceinline__ void st(bf16* p, float v) { p->x = f2bf(v); }

#if defined(__CUDACC__)
__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
#else
// exp(x) = 2^n · exp_poly(x − n·ln2) with n = rint(x·log2 e): the polynomial on r, one definition for the scalar
// ex below and the CPU build's vector exp (window_attn.cu), F a float or a GCC vector of floats.
template <typename F>
__device__ __forceinline__ F exp_reduce(F x, F n) { return (x - n * 0.693359375f) + n * 2.12194440e-4f; }  // two parts
template <typename F>
__device__ __forceinline__ F exp_poly(F r) {
  F p = F{} + 1.98412698e-4f;
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  return p * r + 1.0f;
}
// exp for x ≤ 0 (softmax arguments), written so that `omp simd` loops vectorise it; |rel err| < 2e-7.
__device__ __forceinline__ float ex(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = __builtin_rintf(x * 1.44269504f);
  return exp_poly(exp_reduce(x, n)) * u2f((unsigned)((int)n + 127) << 23);
}
__device__ __forceinline__ double ex(double x) { return __builtin_exp(x); }
#endif

template <typename A> __device__ __forceinline__ A amax(A a, A b) { return a > b ? a : b; }

// Software prefetch for the CPU build (the GPU hides latency with other warps instead): UPB_PF_DIST items
// ahead, into L2 (locality 1); both measured best on the development CPU (2-core EPYC, AVX-512).
#ifndef UPB_PF_DIST
#define UPB_PF_DIST 2
#endif
#if defined(__CUDACC__)
#define UPB_PREFETCH(p) ((void)0)
#else
#define UPB_PREFETCH(p) __builtin_prefetch(p, 0, 1)
#endif

// -- warp helpers: identities when a warp is one lane ------------------------------------------------
#if UPB_LANES > 1
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = UPB_LANES / 2; o > 0; o >>= 1) v += __shfl_xor_sync(UPB_FULL_MASK, v, o);
  return v;
}
template <typename A> __device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = UPB_LANES / 2; o > 0; o >>= 1) v = amax(v, __shfl_xor_sync(UPB_FULL_MASK, v, o));
  return v;
}
// Reduce four per-lane partial sums over the warp with 6 shuffles instead of 20 (reduce-scatter):
// on return each lane holds the total of partial (lane >> 3) & 3.
template <typename A> __device__ __forceinline__ A warp_sum4(A v0, A v1, A v2, A v3, int lane) {
  const bool hi = lane & 16;
  A k0 = hi ? v2 : v0, k1 = hi ? v3 : v1;
  k0 += __shfl_xor_sync(UPB_FULL_MASK, hi ? v0 : v2, 16);
  k1 += __shfl_xor_sync(UPB_FULL_MASK, hi ? v1 : v3, 16);
  const bool h8 = lane & 8;
  A k = h8 ? k1 : k0;
  k += __shfl_xor_sync(UPB_FULL_MASK, h8 ? k0 : k1, 8);
  k += __shfl_xor_sync(UPB_FULL_MASK, k, 4);
  k += __shfl_xor_sync(UPB_FULL_MASK, k, 2);
  k += __shfl_xor_sync(UPB_FULL_MASK, k, 1);
  return k;
}
#define UPB_SYNCWARP() __syncwarp()
// Per-warp scratch in shared memory (on the CPU fast build: a local array; the weak-memory shim defines its own).
#ifndef UPB_WARP_SCRATCH
#define UPB_WARP_SCRATCH(T, name, n) \
  __shared__ T name##_blk[UPB_WARPS][n]; \
  T* name = name##_blk[threadIdx.x / UPB_LANES]
#endif
#else
template <typename A> __device__ __forceinline__ A warp_sum(A v) { return v; }
template <typename A> __device__ __forceinline__ A warp_max(A v) { return v; }
#define UPB_SYNCWARP() ((void)0)
#define UPB_WARP_SCRATCH(T, name, n) T name[n]
#endif

// -- lane primitives ---------------------------------------------------------------------------------
// A lane's channels of one chunk are c0 + j·UPB_LANES + lane, j < UPB_VPT. Regs<T, A, NC> holds that chunk
// for NC outputs at once (so one load of a value row feeds NC FMAs); dots<NC> computes NC×4 dot products
// with one pass over the channels. On the CPU fast build the same primitives use GCC vectors, which keeps
// the accumulators in registers (with a plain array GCC left them on the stack in some loop nests) and
// gives a cheap horizontal sum; every other build (CUDA, SIMT, sanitizers) uses the plain per-lane form.
#if !defined(__CUDACC__) && UPB_LANES == 1 && !defined(UPB_NO_CPU_VEC)
#define UPB_CPU_VEC 1
#endif

#if UPB_CPU_VEC
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
// One native vector register: 64 bytes with AVX-512, else 32 (AVX2). A 64-byte GCC vector on an AVX2 CPU is
// split into two halves, which doubles the register demand of the accumulator blocks and made the kernels
// spill in every inner loop (10× slower on a Zen 3); the binding picks the blocking per ISA (kernel_binding).
#ifdef __AVX512F__
#define UPB_VBYTES 64
#else
#define UPB_VBYTES 32
#endif
// Keep a vector in one register (an empty asm the compiler cannot see through).
#if defined(__AVX512F__) || defined(__AVX2__)
#define UPB_PIN(x) __asm__("" : "+v"(x))
#else
#define UPB_PIN(x) ((void)0)
#endif
typedef float vf __attribute__((vector_size(UPB_VBYTES)));
typedef double vd __attribute__((vector_size(UPB_VBYTES)));
typedef unsigned vu __attribute__((vector_size(UPB_VBYTES)));
typedef unsigned short vh __attribute__((vector_size(UPB_VBYTES / 2)));
template <typename A> struct Vec;
template <> struct Vec<float> { typedef vf type; enum { N = UPB_VBYTES / 4 }; };
template <> struct Vec<double> { typedef vd type; enum { N = UPB_VBYTES / 8 }; };

inline vf vld(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
inline vd vld(const double* p) { vd v; __builtin_memcpy(&v, p, sizeof v); return v; }
inline vf vld(const bf16* p) {
  vh h;
  __builtin_memcpy(&h, p, sizeof h);
  return (vf)(__builtin_convertvector(h, vu) << 16);
}
inline vf vld(const f16* p) {  // h2f on every lane
#if defined(__AVX512F__)
  return (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));  // F16C: exact, as the scalar h2f
#elif defined(__F16C__) && defined(__AVX2__)
  return (vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
#endif
  vh h;
  __builtin_memcpy(&h, p, sizeof h);
  const vu x = __builtin_convertvector(h, vu), em = x & 0x7fffu, sign = (x & 0x8000u) << 16;
  const vu sub = (vu)(__builtin_convertvector(em, vf) * 0x1p-24f);  // as the scalar h2f: no subnormal arithmetic
  const vu normal = em >= 0x7c00u ? ((em << 13) | 0x7f800000u) : (em << 13) + 0x38000000u;
  return (vf)((em < 0x400u ? sub : normal) | sign);
}
inline void vst(float* p, vf v) {
  // Outputs are written once and never read back by the kernel: stream full aligned vectors past the cache
  // (no read-for-ownership), which the output-bound kernels need to reach the FMA roofline.
#if defined(__SANITIZE_ADDRESS__)
  // sanitizer builds: AddressSanitizer does not instrument non-temporal store builtins, so every store is plain
#elif defined(__AVX512F__)
  if (((unsigned long)p & 63) == 0) return _mm512_stream_ps(p, (__m512)v);
#elif defined(__AVX2__)
  if (((unsigned long)p & 31) == 0) return _mm256_stream_ps(p, (__m256)v);
#endif
  __builtin_memcpy(p, &v, sizeof v);
}
inline void vst(double* p, vd v) { __builtin_memcpy(p, &v, sizeof v); }
inline void vst(bf16* p, vf v) {
  const vu u = (vu)v;
  const vu r = ((u & 0x7fffffffu) > 0x7f800000u) ? ((u >> 16) | 0x40u) : ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  const vh h = __builtin_convertvector(r, vh);
  __builtin_memcpy(p, &h, sizeof h);
}
inline void vst(f16* p, vf v) {
  // round to nearest even in hardware; the same results as the scalar f2h except NaN payloads
#if defined(__AVX512F__)
  return _mm256_storeu_si256((__m256i*)p, _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__F16C__) && defined(__AVX2__)
  return _mm_storeu_si128((__m128i*)p, _mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (int i = 0; i < (int)Vec<float>::N; ++i) p[i].x = f2h(v[i]);
}
// Horizontal sums of four vectors at once: lane i of the result is the sum of vector i.
inline void hsum4(vf a, vf b, vf c, vf d, float* out) {
#if UPB_VBYTES == 64
  const vf ab = __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const vf cd = __builtin_shufflevector(c, d, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
                __builtin_shufflevector(c, d, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  const vf x = __builtin_shufflevector(ab, cd, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
               __builtin_shufflevector(ab, cd, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  const vf y = x + __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  const vf z = y + __builtin_shufflevector(y, y, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  out[0] = z[0], out[1] = z[4], out[2] = z[8], out[3] = z[12];
#else
  const vf ab = __builtin_shufflevector(a, b, 0, 1, 2, 3, 8, 9, 10, 11) +
                __builtin_shufflevector(a, b, 4, 5, 6, 7, 12, 13, 14, 15);
  const vf cd = __builtin_shufflevector(c, d, 0, 1, 2, 3, 8, 9, 10, 11) +
                __builtin_shufflevector(c, d, 4, 5, 6, 7, 12, 13, 14, 15);
  const vf x = __builtin_shufflevector(ab, cd, 0, 1, 4, 5, 8, 9, 12, 13) +
               __builtin_shufflevector(ab, cd, 2, 3, 6, 7, 10, 11, 14, 15);
  const vf y = x + __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6);
  out[0] = y[0], out[1] = y[2], out[2] = y[4], out[3] = y[6];
#endif
}
inline void hsum4(vd a, vd b, vd c, vd d, double* out) {
  const vd v[4] = {a, b, c, d};
  for (int i = 0; i < 4; ++i)
#if UPB_VBYTES == 64
    out[i] = ((v[i][0] + v[i][4]) + (v[i][1] + v[i][5])) + ((v[i][2] + v[i][6]) + (v[i][3] + v[i][7]));
#else
    out[i] = (v[i][0] + v[i][2]) + (v[i][1] + v[i][3]);
#endif
}

template <typename T, typename A, int NC, int VPT = UPB_VPT> struct Regs {
  typedef typename Vec<A>::type V;
  enum { N = Vec<A>::N, NV = VPT / Vec<A>::N };
  static_assert(VPT % Vec<A>::N == 0, "VPT must be a multiple of the vector width");
  V r[NC][NV];
  inline void zero() {
    for (int n = 0; n < NC; ++n)
      for (int i = 0; i < NV; ++i) r[n][i] = V{};
  }
  // r[n] += a[n] · row[chunk]; a partial chunk still takes its whole vectors as vectors.
  template <bool TAIL> inline void axpy(const A* a, const T* __restrict row, i64 c0, i64 C, int) {
    const i64 whole = TAIL ? (C - c0) / N : NV;
    for (int i = 0; i < NV; ++i) {
      if (i < whole) {
        V x = vld(row + c0 + i * N);
        if (NC > 1) UPB_PIN(x);  // one load for NC FMAs (see dots)
        for (int n = 0; n < NC; ++n) r[n][i] += a[n] * x;
      } else {
        for (int j = 0; j < N && c0 + i * N + j < C; ++j) {
          const A x = ld(row + c0 + i * N + j);
          for (int n = 0; n < NC; ++n) r[n][i][j] += a[n] * x;
        }
        break;
      }
    }
  }
  template <bool TAIL> inline void store(int n, T* __restrict row, i64 c0, i64 C, int) const {
    const i64 whole = TAIL ? (C - c0) / N : NV;
    for (int i = 0; i < NV; ++i) {
      if (i < whole) {
        vst(row + c0 + i * N, r[n][i]);
      } else {
        for (int j = 0; j < N && c0 + i * N + j < C; ++j) st(row + c0 + i * N + j, r[n][i][j]);
        break;
      }
    }
  }
};

// A register tile of a small GEMM (the CPU packed path, window_attn.cu fused_packed): acc[n][i] = Σ_t a[n][t] ·
// brow(t)[i·N …] for NR rows a (each term broadcast) and NV vectors of the row brow(t), over kt terms; then
// store(n, i, acc). 4 × 3 takes 12 of AVX2's 16 registers, leaving 3 for b's vectors and 1 for the broadcast:
// every loaded vector feeds NR FMAs and every broadcast NV, and 12 independent chains cover the FMA latency.
template <int NR, int NV, typename T, typename Brow, typename F>
inline void gemm_tile(const T* const* a, const Brow& brow, i64 kt, F&& store) {
  typedef typename Vec<T>::type V;
  enum { N = Vec<T>::N };
  V acc[NR][NV];
#pragma GCC unroll 4
  for (int n = 0; n < NR; ++n)
#pragma GCC unroll 3
    for (int i = 0; i < NV; ++i) acc[n][i] = V{};
  for (i64 t = 0; t < kt; ++t) {
    const T* b = brow(t);
    // three named registers, pinned (an array of them went through the stack; unpinned, GCC folded each load
    // into its NR FMAs)
    V y0 = vld(b), y1 = NV > 1 ? vld(b + N) : V{}, y2 = NV > 2 ? vld(b + 2 * N) : V{};
    UPB_PIN(y0);
    if (NV > 1) UPB_PIN(y1);
    if (NV > 2) UPB_PIN(y2);
#pragma GCC unroll 4
    for (int n = 0; n < NR; ++n) {
      const T x = a[n][t];  // broadcast once, for NV FMAs
      acc[n][0] += x * y0;
      if (NV > 1) acc[n][1] += x * y1;
      if (NV > 2) acc[n][2] += x * y2;
    }
  }
#pragma GCC unroll 4
  for (int n = 0; n < NR; ++n)
#pragma GCC unroll 3
    for (int i = 0; i < NV; ++i) store(n, i, acc[n][i]);
}

// dst[d·ld + l] = src[l][d] for the N rows src (one vector's lanes) and d < D: a window's keys packed transposed
// (window_attn.cu, fused_packed). fp32 with 8-lane vectors: 8×8 blocks transposed in registers (24 shuffles
// for 64 elements); otherwise, and for the last D mod 8 channels, element by element.
template <typename T>
inline void transpose_rows(const T* const* src, i64 D, T* __restrict dst, i64 ld) {
  enum { N = Vec<T>::N };
  i64 d0 = 0;
  if constexpr (sizeof(T) == 4 && N == 8) {
    for (; d0 + 8 <= D; d0 += 8) {
      vf r[8];
      for (int l = 0; l < 8; ++l) r[l] = vld(src[l] + d0);
      vf t[8], u[8];
      for (int p = 0; p < 4; ++p) {  // interleave row pairs
        t[2 * p] = __builtin_shufflevector(r[2 * p], r[2 * p + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[2 * p + 1] = __builtin_shufflevector(r[2 * p], r[2 * p + 1], 2, 10, 3, 11, 6, 14, 7, 15);
      }
      for (int h = 0; h < 2; ++h)  // rows 4h … 4h + 3: u[4h + j] holds columns j and j + 4 of them
        for (int j = 0; j < 2; ++j) {
          u[4 * h + 2 * j] = __builtin_shufflevector(t[4 * h + j], t[4 * h + 2 + j], 0, 1, 8, 9, 4, 5, 12, 13);
          u[4 * h + 2 * j + 1] = __builtin_shufflevector(t[4 * h + j], t[4 * h + 2 + j], 2, 3, 10, 11, 6, 7, 14, 15);
        }
      for (int j = 0; j < 4; ++j) {  // column j and j + 4 of all eight rows
        const vf lo = __builtin_shufflevector(u[j], u[4 + j], 0, 1, 2, 3, 8, 9, 10, 11);
        const vf hi = __builtin_shufflevector(u[j], u[4 + j], 4, 5, 6, 7, 12, 13, 14, 15);
        __builtin_memcpy(dst + (d0 + j) * ld, &lo, sizeof lo);
        __builtin_memcpy(dst + (d0 + j + 4) * ld, &hi, sizeof hi);
      }
    }
  }
  for (i64 d = d0; d < D; ++d)
    for (int l = 0; l < N; ++l) dst[d * ld + l] = src[l][d];
}

// out[n][j] = <x[n], y[j]> over D channels, for NC rows x and NY ≤ 4 rows y (out[n][j ≥ NY] = 0: a window's last
// group of slots computes no products for the slots it lacks).
template <int NC, int NY = 4, typename T, typename A>
inline void dots(const T* const* x, const T* const* y, i64 D, int, A (*out)[4]) {
  static_assert(NY >= 1 && NY <= 4, "dots takes one to four rows y");
  typedef typename Vec<A>::type V;
  const int N = Vec<A>::N;
  V s[NC][4];
  for (int n = 0; n < NC; ++n)
    for (int j = 0; j < 4; ++j) s[n][j] = V{};
  i64 c = 0;
  for (; c + N <= D; c += N) {
    V y0 = vld(y[0] + c), y1 = NY > 1 ? vld(y[1] + c) : V{}, y2 = NY > 2 ? vld(y[2] + c) : V{},
      y3 = NY > 3 ? vld(y[3] + c) : V{};
    // Pin the loaded rows in registers: otherwise GCC folds them into each FMA as a memory operand, which
    // doubles the loads and makes the loop load-bound.
    UPB_PIN(y0);
    if (NY > 1) UPB_PIN(y1);
    if (NY > 2) UPB_PIN(y2);
    if (NY > 3) UPB_PIN(y3);
    for (int n = 0; n < NC; ++n) {
      V xv = vld(x[n] + c);
      UPB_PIN(xv);
      s[n][0] += xv * y0;
      if (NY > 1) s[n][1] += xv * y1;
      if (NY > 2) s[n][2] += xv * y2;
      if (NY > 3) s[n][3] += xv * y3;
    }
  }
  for (int n = 0; n < NC; ++n) hsum4(s[n][0], s[n][1], s[n][2], s[n][3], out[n]);
  for (; c < D; ++c)
    for (int j = 0; j < NY; ++j) {
      const A yj = ld(y[j] + c);
      for (int n = 0; n < NC; ++n) out[n][j] += ld(x[n] + c) * yj;
    }
}

#else

template <typename T, typename A, int NC, int VPT = UPB_VPT> struct Regs {
  A r[NC][VPT];
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int n = 0; n < NC; ++n)
#pragma unroll
      for (int j = 0; j < VPT; ++j) r[n][j] = A(0);
  }
  template <bool TAIL>
  __device__ __forceinline__ void axpy(const A* a, const T* __restrict__ row, i64 c0, i64 C, int lane) {
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      const i64 c = c0 + (i64)j * UPB_LANES + lane;
      if (!TAIL || c < C) {
        const A x = ld(row + c);
#pragma unroll
        for (int n = 0; n < NC; ++n) r[n][j] += a[n] * x;
      }
    }
  }
  template <bool TAIL>
  __device__ __forceinline__ void store(int n, T* __restrict__ row, i64 c0, i64 C, int lane) const {
#pragma unroll
    for (int j = 0; j < VPT; ++j) {
      const i64 c = c0 + (i64)j * UPB_LANES + lane;
      if (!TAIL || c < C) st(row + c, r[n][j]);
    }
  }
};

// Per-lane partial dot products over the lane's channels (c = lane, lane + UPB_LANES, …); rows y[j ≥ NY] are
// not read and give 0.
template <int NC, int NY = 4, typename T, typename A>
__device__ __forceinline__ void dots(const T* const* x, const T* const* y, i64 D, int lane, A (*out)[4]) {
  static_assert(NY >= 1 && NY <= 4, "dots takes one to four rows y");
  A s[NC][4];
#pragma unroll
  for (int n = 0; n < NC; ++n)
#pragma unroll
    for (int j = 0; j < 4; ++j) s[n][j] = A(0);
  for (i64 c = lane; c < D; c += UPB_LANES) {
    A yv[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) yv[j] = j < NY ? A(ld(y[j] + c)) : A(0);
#pragma unroll
    for (int n = 0; n < NC; ++n) {
      const A xs = ld(x[n] + c);
#pragma unroll
      for (int j = 0; j < NY; ++j) s[n][j] += xs * yv[j];
    }
  }
#pragma unroll
  for (int n = 0; n < NC; ++n)
#pragma unroll
    for (int j = 0; j < 4; ++j) out[n][j] = s[n][j];
}
#endif

template <int N> struct Int { static constexpr int value = N; };
template <bool B> struct Flag { static constexpr bool value = B; };

}  // namespace upb

// -- entry points: one extern "C" kernel per (op, dtype); on the CPU a host function that launches it ----
#define UPB_UNPAREN(...) __VA_ARGS__
// __launch_bounds__(block, 4): with the block size alone ptxas capped registers at 64 and spilled; asking for
// 4 resident blocks (16 warps) per SM allows up to 128.
#ifndef UPB_ENTRY
#define UPB_ENTRY(NAME, PARAMS, ...) \
  extern "C" __global__ void __launch_bounds__(UPB_LANES * UPB_WARPS, 4) NAME PARAMS { __VA_ARGS__; }
#endif
