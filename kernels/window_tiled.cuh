// Tiled fused forward of the window-attention family (docs/kernels.md, "The tiled fused forward"): a GPU design
// for the memory system, beside window_attn.cu's warp-per-parent fused kernel (which stays the CPU's path).
//
// A block owns a tile of TU×TV low-res parents (one batch item, one group) and all their s² children. It stages the
// window's halo of k (then of v) in shared memory, one channel slice at a time, with 16-byte copies (cp.async on
// sm_80+); accumulates every child's M logits in shared memory across the D slices (each (child, slot) entry has
// one owning thread, so the slices need no barrier for them); holds the slice of q of UPB_TILE_NCH children of one
// parent in a thread's registers (16-byte loads), so that each staged row read feeds NCH children; takes the
// softmax (max subtraction, fp32 / fp64); then aggregates over C slices of the staged v halo (again NCH children
// per row read) and writes the output with streaming stores (st.global.cs). When the logits of all children do
// not fit, a tile takes its children NCB at a time (passes). I32: 32-bit index arithmetic (the binding chooses it
// when every tensor has < 2^31 elements).
//
// Halo: under every border rule a slot's position is a monotone, 1-Lipschitz function of the parent and of the
// offset (zero: p + d; clamp: clamp(p + d, 0, n−1); shift: clamp(p, −lo, n−1−hi) + d), so the positions a tile
// needs lie in [pos(first parent, lo), pos(first parent, lo) + T + hi − lo): an (TU + hu − lu) × (TV + hv − lv)
// box of rows. Rows of the box off the map are zero-filled, which is the zero rule's value (and logit, q·0 = 0),
// so no slot needs a test in the inner loops. A slot table (parent, slot) → box row is built once per tile.
//
// Shared memory: one static pool of UPB_TILE_POOL bytes, carved by the binding's plan (TU, TV, NCB; NCB a multiple
// of NCH): slot table P·M ints | logits NCB·M accumulators | halo box rows of Slice<T>::ROW bytes (a slice + 16 B
// pad, so that the 16-byte reads of neighbouring rows fall in different banks).
// Barriers (each removed in turn by the mutation tests): S0 tile start (the previous tile's readers are done),
// S1 before a k slice is staged (readers of the previous slice), S2 after it, S1g before given logits are loaded,
// S3 logits complete, S5 before a v slice (readers of the previous one), S6 after it (it also publishes the
// softmax's normalised weights: a separate barrier there was found redundant by its mutant).
#pragma once

#include "upb_common.cuh"

#ifndef UPB_TILE_POOL
#define UPB_TILE_POOL (46 * 1024)  // static shared memory per block: under the 48 KB static limit, 4 blocks / SM on H100
#endif
#define UPB_TILE_SLICE_BYTES 64  // a channel slice: 16 fp32 channels (64 B); 16 fp16 / bf16 (32 B); 4 fp64 (32 B)
#define UPB_TILE_NCH 4           // children of one parent per thread: each staged row read feeds NCH of them

namespace upb {
namespace wt {

template <bool I32> struct Idx { typedef i64 t; };
template <> struct Idx<true> { typedef int t; };

struct alignas(16) U16 { unsigned x[4]; };  // one 16-byte vector (ld/st .v4.u32)

__device__ __forceinline__ double b2d(unsigned long long b) {
#if defined(__CUDACC__)
  return __longlong_as_double((long long)b);
#else
  double d;
  __builtin_memcpy(&d, &b, 8);
  return d;
#endif
}
__device__ __forceinline__ unsigned long long d2b(double d) {
#if defined(__CUDACC__)
  return (unsigned long long)__double_as_longlong(d);
#else
  unsigned long long b;
  __builtin_memcpy(&b, &d, 8);
  return b;
#endif
}

// Channels of a slice (SL) and per 16-byte vector (VW) of storage type T; A is the accumulation type.
template <typename T> struct Slice {
  // fp64: 4 channels (32 B) a slice, so that NCH × SL q values fit the registers (8 spilled on sm_80)
  enum { E = (int)sizeof(T), SL = UPB_TILE_SLICE_BYTES / (E == 8 ? 16 : 4), VW = 16 / E, ROW = SL * E + 16 };
};

// 16 bytes of T ↔ VW accumulators.
__device__ __forceinline__ void unpack(const U16& u, float* o, const float*) {
#pragma unroll
  for (int i = 0; i < 4; ++i) o[i] = u2f(u.x[i]);
}
__device__ __forceinline__ void unpack(const U16& u, double* o, const double*) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    o[i] = b2d((unsigned long long)u.x[2 * i] | ((unsigned long long)u.x[2 * i + 1] << 32));
  }
}
__device__ __forceinline__ void unpack(const U16& u, float* o, const f16*) {
#pragma unroll
  for (int i = 0; i < 4; ++i) o[2 * i] = h2f((unsigned short)(u.x[i] & 0xffffu)), o[2 * i + 1] = h2f((unsigned short)(u.x[i] >> 16));
}
__device__ __forceinline__ void unpack(const U16& u, float* o, const bf16*) {
#pragma unroll
  for (int i = 0; i < 4; ++i) o[2 * i] = u2f(u.x[i] << 16), o[2 * i + 1] = u2f(u.x[i] & 0xffff0000u);
}
__device__ __forceinline__ void pack(U16& u, const float* a, const float*) {
#pragma unroll
  for (int i = 0; i < 4; ++i) u.x[i] = f2u(a[i]);
}
__device__ __forceinline__ void pack(U16& u, const double* a, const double*) {
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    const unsigned long long b = d2b(a[i]);
    u.x[2 * i] = (unsigned)b, u.x[2 * i + 1] = (unsigned)(b >> 32);
  }
}
__device__ __forceinline__ void pack(U16& u, const float* a, const f16*) {
#pragma unroll
  for (int i = 0; i < 4; ++i) u.x[i] = (unsigned)f2h(a[2 * i]) | ((unsigned)f2h(a[2 * i + 1]) << 16);
}
__device__ __forceinline__ void pack(U16& u, const float* a, const bf16*) {
#pragma unroll
  for (int i = 0; i < 4; ++i) u.x[i] = (unsigned)f2bf(a[2 * i]) | ((unsigned)f2bf(a[2 * i + 1]) << 16);
}

// Memory operations the GPU does with dedicated instructions; the shim with plain copies.
__device__ __forceinline__ void cp16(void* dst_shared, const void* src) {  // global → shared, 16 bytes
#if defined(__CUDACC__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned sa;
  asm volatile("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(sa) : "l"(dst_shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(sa), "l"(src) : "memory");
#else
  *(U16*)dst_shared = *(const U16*)src;
#endif
}
__device__ __forceinline__ void cp_wait() {  // this thread's async copies have landed (the barrier publishes them)
#if defined(__CUDACC__) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;" ::: "memory");
#endif
}
__device__ __forceinline__ void st_stream(void* dst, const U16& u) {  // evict-first store of an output vector
#if defined(__CUDACC__)
  asm volatile("st.global.cs.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(u.x[0]), "r"(u.x[1]), "r"(u.x[2]),
               "r"(u.x[3]) : "memory");
#else
  *(U16*)dst = u;
#endif
}
__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15) == 0; }

// Slot position along one axis (length n) for parent p and offset d; the shift rule's window start range [a, b].
// Never -1: a zero-rule position off the map indexes a zero-filled row of the halo box.
__device__ __forceinline__ i64 pos(int mode, i64 p, i64 d, i64 n, i64 a, i64 b) {
  if (mode == 0) return p + d;
  if (mode == 1) return p + d < 0 ? 0 : (p + d > n - 1 ? n - 1 : p + d);
  return (p < a ? a : (p > b ? b : p)) + d;
}

// Block scratch: the weak-memory shim hands out views of its modelled shared memory; elsewhere a static pool.
#if defined(UPB_WEAK)
#define UPB_TILE_SCRATCH(name) unsigned char* name = upb_scratch<unsigned char>(UPB_TILE_POOL)
#else
#define UPB_TILE_SCRATCH(name)                          \
  __shared__ U16 name##_pool[UPB_TILE_POOL / 16];      \
  unsigned char* name = (unsigned char*)name##_pool
#endif

// Stage rows [0, EU·EV) of the halo box, channels [c0, c0 + SL) of a group's slice (width n, row stride ld),
// zero-filled off the map and past n. vec: 16-byte copies are legal for full vectors (aligned base, ld, offset).
template <typename T, typename I>
__device__ __forceinline__ void stage(unsigned char* box, const T* __restrict__ x, I ld, I n, I c0, i64 bb, i64 hu0,
                                      i64 hv0, int EU, int EV, i64 H, i64 W, bool vec, int tid, int nth) {
  typedef Slice<T> S;
  const int per = S::SL / S::VW, items = EU * EV * per;
  for (int w = tid; w < items; w += nth) {
    const int r = w / per, i = w - r * per;
    const i64 gu = hu0 + r / EV, gv = hv0 + r % EV;
    unsigned char* dst = box + r * S::ROW + i * 16;
    const I c = c0 + (I)(i * S::VW);
    const bool on = gu >= 0 && gu < H && gv >= 0 && gv < W;
    const T* src = x + ((I)((bb * H + (on ? gu : 0)) * W + (on ? gv : 0))) * ld + c;
    if (on && vec && c + (I)S::VW <= n) {
      cp16(dst, src);
    } else {
      union { T t[S::VW]; U16 u; } tmp;
#pragma unroll
      for (int e = 0; e < S::VW; ++e) tmp.t[e] = on && c + e < n ? src[e] : T{};
      *(U16*)dst = tmp.u;
    }
  }
  cp_wait();
}

// The fused forward over tiles. Computed logits (GIVEN false): q (B, sH, sW, G·D), k (B, H, W, G·D); given:
// L (B, sH, sW, G·M) in q's place. v (B, H, W, G·C), out (B, sH, sW, G·C). Plan: TU×TV parents, NCB child slots
// per pass (the binding's tile_plan; checked against the pool in debug builds).
template <bool GIVEN, bool I32, typename T>
__device__ __forceinline__ void tiled_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                             T* __restrict__ out, const i64* off, i64 B, i64 H, i64 W, i64 D, i64 C,
                                             i64 M_, i64 s_, i64 G, i64 mode_, i64 scale_bits, i64 TU_, i64 TV_,
                                             i64 NCB_) {
  typedef typename Acc<T>::type A;
  typedef typename Idx<I32>::t I;
  typedef Slice<T> S;
  constexpr int NCH = UPB_TILE_NCH;
  const int M = (int)M_, s = (int)s_, mode = (int)mode_, TU = (int)TU_, TV = (int)TV_, NCB = (int)NCB_;
  const int tid = (int)threadIdx.x, nth = (int)blockDim.x, ss = s * s;
  const i64 grp = blockIdx.y;
  if (grp >= G) return;
  const A scale = (A)b2d((unsigned long long)scale_bits);
  // The window's extent and the shift rule's start range.
  i64 lu = 0, hu = 0, lv = 0, hv = 0;
  for (int m = 0; m < M; ++m) {
    const i64 du = off[2 * m], dv = off[2 * m + 1];
    lu = m == 0 || du < lu ? du : lu, hu = m == 0 || du > hu ? du : hu;
    lv = m == 0 || dv < lv ? dv : lv, hv = m == 0 || dv > hv ? dv : hv;
  }
  const int EU = TU + (int)(hu - lu), EV = TV + (int)(hv - lv), P = TU * TV;
  const int o_lg = (P * M * 4 + 15) & ~15, o_box = o_lg + ((NCB * M * (int)sizeof(A) + 15) & ~15);
  UPB_DEVICE_CHECK(M >= 1 && M <= UPB_MAX_KK && s >= 1 && TU >= 1 && TV >= 1 && NCB >= NCH && NCB % NCH == 0 &&
                   o_box + EU * EV * S::ROW <= UPB_TILE_POOL, "tiled window_attn: plan exceeds the shared pool");
  UPB_TILE_SCRATCH(pool);
  int* tab = (int*)pool;
  A* lg = (A*)(pool + o_lg);
  unsigned char* box = pool + o_box;

  const I OH = (I)(H * s), OW = (I)(W * s), ldq = (I)(G * (GIVEN ? M : D)), ldv = (I)(G * C);
  const i64 tu_n = (H + TU - 1) / TU, tv_n = (W + TV - 1) / TV, tiles = B * tu_n * tv_n;
  const T* qg = q + (I)grp * (I)(GIVEN ? M : D);
  const T* kg = k + (I)grp * (I)D;
  const T* vg = v + (I)grp * (I)C;
  T* og = out + (I)grp * (I)C;
  // 16-byte copies and stores are legal when every row start of the group's slice is 16-byte aligned.
  const bool kvec = !GIVEN && aligned16(kg) && aligned16(qg) && (ldq % S::VW) == 0;
  const bool vvec = aligned16(vg) && (ldv % S::VW) == 0;
  const bool ovec = aligned16(og) && (ldv % S::VW) == 0;

  for (i64 t = blockIdx.x; t < tiles; t += gridDim.x) {
    const i64 bb = t / (tu_n * tv_n), tr = t - bb * tu_n * tv_n, u0 = (tr / tv_n) * TU, v0 = (tr % tv_n) * TV;
    const int tue = (int)(H - u0 < TU ? H - u0 : TU), tve = (int)(W - v0 < TV ? W - v0 : TV), pe = tue * tve;
    const i64 hu0 = pos(mode, u0, lu, H, -lu, H - 1 - hu), hv0 = pos(mode, v0, lv, W, -lv, W - 1 - hv);
    __syncthreads();  // S0: the previous tile's readers of the table, logits and halo are done
    for (int w = tid; w < pe * M; w += nth) {
      const int p = w / M, m = w - p * M;
      const i64 pu = u0 + p / tve, pv = v0 + p % tve;
      tab[w] = (int)((pos(mode, pu, off[2 * m], H, -lu, H - 1 - hu) - hu0) * EV +
                     (pos(mode, pv, off[2 * m + 1], W, -lv, W - 1 - hv) - hv0));
    }
    // Children go in groups of NCH of one parent (the last group of a parent masked when NCH ∤ s²): a group's
    // members share every slot row, so one shared-memory read of a row feeds NCH children. NCB / NCH groups a pass.
    const int gpp = (ss + NCH - 1) / NCH, ngt = pe * gpp, NG = NCB / NCH;
    for (int g0 = 0; g0 < ngt; g0 += NG) {
      const int ng = ngt - g0 < NG ? ngt - g0 : NG;
      // Member j of group gl of this pass: parent p, whether it exists, its high-res pixel index.
      auto child = [&](int gl, int j, int& p, bool& ok) -> I {
        const int g = g0 + gl;
        p = g / gpp;
        const int r = (g - p * gpp) * NCH + j, rr = r < ss ? r : 0, ci = rr / s, cj = rr - ci * s;
        ok = r < ss;
        return ((I)bb * OH + (I)((u0 + p / tve) * s + ci)) * OW + (I)((v0 + p % tve) * s + cj);
      };
      if (!GIVEN) {
        const int R = nth / ng > 1 ? nth / ng : 1;  // threads per group: they split its slots
        for (I d0 = 0; d0 < (I)D; d0 += S::SL) {
          __syncthreads();  // S1: the previous slice's readers of the halo are done
          stage<T, I>(box, kg, ldq, (I)D, d0, bb, hu0, hv0, EU, EV, H, W, kvec, tid, nth);
          __syncthreads();  // S2: the k slice is staged
          for (int w = tid; w < ng * R; w += nth) {
            const int gl = w % ng, jj = w / ng;
            int p = 0;
            A qs[NCH][S::SL];  // this slice of the members' q rows, in registers (16-byte loads)
#pragma unroll
            for (int j = 0; j < NCH; ++j) {
              bool ok;
              const T* qr = qg + child(gl, j, p, ok) * ldq + d0;
              if (ok && kvec && d0 + S::SL <= (I)D) {
#pragma unroll
                for (int i = 0; i < S::SL / S::VW; ++i) unpack(*(const U16*)(qr + i * S::VW), qs[j] + i * S::VW, (const T*)0);
              } else {
#pragma unroll
                for (int i = 0; i < S::SL; ++i) qs[j][i] = ok && d0 + i < (I)D ? (A)ld(qr + i) : A(0);
              }
            }
            const int* tp = tab + p * M;
            A* lr = lg + gl * NCH * M;
            for (int m = jj; m < M; m += R) {
              const unsigned char* kr = box + tp[m] * S::ROW;
              A acc[NCH];
#pragma unroll
              for (int j = 0; j < NCH; ++j) acc[j] = A(0);
#pragma unroll
              for (int i = 0; i < S::SL / S::VW; ++i) {
                A x[S::VW];
                unpack(*(const U16*)(kr + i * 16), x, (const T*)0);
#pragma unroll
                for (int j = 0; j < NCH; ++j)
#pragma unroll
                  for (int e = 0; e < S::VW; ++e) acc[j] += qs[j][i * S::VW + e] * x[e];
              }
#pragma unroll
              for (int j = 0; j < NCH; ++j) lr[j * M + m] = d0 == 0 ? acc[j] : lr[j * M + m] + acc[j];
            }
          }
        }
      } else {
        __syncthreads();  // S1g: the previous pass's readers of the logits are done
        for (int w = tid; w < ng * NCH * M; w += nth) {
          const int n = w / M, m = w - n * M;
          int p;
          bool ok;
          const I px = child(n / NCH, n % NCH, p, ok);
          lg[w] = ok ? (A)ld(qg + px * ldq + m) : A(0);
        }
      }
      __syncthreads();  // S3: every logit of the pass is complete
      for (int n = tid; n < ng * NCH; n += nth) {
        A* e = lg + n * M;
        A mx = e[0];
        for (int m = 1; m < M; ++m) mx = amax(mx, e[m]);
        A sum = A(0);
        for (int m = 0; m < M; ++m) {
          const A x = ex((e[m] - mx) * scale);
          e[m] = x;
          sum += x;
        }
        const A inv = A(1) / sum;
        for (int m = 0; m < M; ++m) e[m] *= inv;
      }
      // No barrier here: S6 below (after the first v slice is staged, before any weight is read) also publishes
      // the normalised weights. The barrier-mutant test found a separate one here removable without effect.
      const int per = S::SL / S::VW;  // threads per group in the aggregation: one 16-byte vector of channels each
      for (I c0 = 0; c0 < (I)C; c0 += S::SL) {
        if (c0 > 0) __syncthreads();  // S5: the previous slice's readers of the halo are done
        stage<T, I>(box, vg, ldv, (I)C, c0, bb, hu0, hv0, EU, EV, H, W, vvec, tid, nth);
        __syncthreads();  // S6: the v slice is staged
        for (int w = tid; w < ng * per; w += nth) {
          const int gl = w / per, i = w - gl * per;
          int p;
          bool ok;
          child(gl, 0, p, ok);
          const int* tp = tab + p * M;
          const A* wr = lg + gl * NCH * M;
          A acc[NCH][S::VW];
#pragma unroll
          for (int j = 0; j < NCH; ++j)
#pragma unroll
            for (int e = 0; e < S::VW; ++e) acc[j][e] = A(0);
          for (int m = 0; m < M; ++m) {
            A x[S::VW];
            unpack(*(const U16*)(box + tp[m] * S::ROW + i * 16), x, (const T*)0);
#pragma unroll
            for (int j = 0; j < NCH; ++j) {
              const A wt = wr[j * M + m];
#pragma unroll
              for (int e = 0; e < S::VW; ++e) acc[j][e] += wt * x[e];
            }
          }
          const I c = c0 + (I)(i * S::VW);
#pragma unroll
          for (int j = 0; j < NCH; ++j) {
            const I px = child(gl, j, p, ok);
            if (!ok) continue;
            T* orow = og + px * ldv + c;
            if (ovec && c + (I)S::VW <= (I)C) {
              U16 u;
              pack(u, acc[j], (const T*)0);
              st_stream(orow, u);
            } else {
              for (int e = 0; e < S::VW; ++e)
                if (c + e < (I)C) st(orow + e, acc[j][e]);
            }
          }
        }
      }
    }
  }
}

}  // namespace wt
}  // namespace upb
