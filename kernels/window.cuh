// Window kernels shared by SAPA and CARAFE (DESIGN.md §2), channels-last; see docs/kernels.md.
//
//   sim   S[i,j,m]  = <q(i,j), k(slot m)>                (0 for a slot off the map)
//   atn   out(i,j)  = Σ_m A[i,j,m] · v(slot m)             (CARAFE's reassembly)
//   atn_t out(u,v)  = Σ over (i,j,m) with slot m of (i,j) = (u,v) of A[i,j,m] · g(i,j)
// each per channel group (G groups side by side in a row; SAPA has G = 1). Backward of both sim and atn is
// built from the three: d sim = (atn(dS, k), atn_t(dS, q)); d atn = (sim(dout, v), atn_t(A, dout)).
// atn_t gathers (no atomics), so every kernel is deterministic.
//
// A warp owns one work item; its lanes stride over contiguous channels (coalesced), UPB_VPT channels per lane
// per chunk live in registers. Items: sim / atn — one low-res pixel with its s² children, UPB_NC children at a
// time so that each loaded key or value row feeds UPB_NC outputs; atn_t — one (low-res pixel, channel chunk)
// with chunks on grid.y, so that blocks run chunk-major and the K²·s² high-res rows an item gathers stay in
// cache for its neighbours.
#pragma once

#include "upb_common.cuh"

namespace upb {
namespace win {


struct Geo {
  i64 H, W, OH, OW;  // low-res and high-res maps
  int K, s, r, KK;

  __device__ Geo(i64 H_, i64 W_, i64 K_, i64 s_)
      : H(H_), W(W_), OH(H_ * s_), OW(W_ * s_), K((int)K_), s((int)s_), r((int)((K_ - 1) / 2)), KK((int)(K_ * K_)) {
    UPB_DEVICE_CHECK(K_ >= 1 && K_ <= UPB_MAX_K && (K_ & 1) && s_ >= 1, "window size K or scale s out of range");
  }

  // Pixel index of the c-th child (row-major in s×s) of low-res pixel (b, u, v) in a (B, sH, sW, ·) tensor.
  __device__ __forceinline__ i64 child(i64 b, i64 u, i64 v, int c) const {
    return (b * OH + u * s + c / s) * OW + v * s + c % s;
  }
  // Split a low-res pixel index into (b, u, v).
  __device__ __forceinline__ void split(i64 p, i64& b, i64& u, i64& v) const {
    const i64 bu = p / W;
    v = p - bu * W;
    b = bu / H;
    u = bu - b * H;
  }
  // Pixel index of low-res (b, uu, vv) or -1 when it is off the map.
  __device__ __forceinline__ i64 low(i64 b, i64 uu, i64 vv) const {
    return (uu >= 0 && uu < H && vv >= 0 && vv < W) ? (b * H + uu) * W + vv : -1;
  }
};

// Grid-stride walk over the low-res pixels (b, u, v), one per warp. The stride is split once, so a step
// needs no 64-bit division (a called subroutine on the GPU, whose call sites made ptxas spill).
struct Pixels {
  i64 b, u, v, db, du, dv;
  const i64 B, H, W;
  __device__ Pixels(const Geo& g, i64 B_) : B(B_), H(g.H), W(g.W) {
    g.split((i64)blockIdx.x * UPB_WARPS + threadIdx.x / UPB_LANES, b, u, v);
    g.split((i64)gridDim.x * UPB_WARPS, db, du, dv);
  }
  __device__ __forceinline__ bool ok() const { return b < B; }
  __device__ __forceinline__ void next() {
    v += dv, u += du, b += db;
    if (v >= W) v -= W, ++u;
    if (u >= H) u -= H, ++b;
  }
  __device__ __forceinline__ i64 index() const { return (b * H + u) * W + v; }
};

// f(Int<NC>, px) for the s² children of (b, u, v) in groups of UPB_NC (then one at a time), px[NC] their
// pixel indices: a group shares every key and value row it loads.
template <typename F>
__device__ __forceinline__ void child_groups(const Geo& g, i64 b, i64 u, i64 v, F&& f) {
  const int n = g.s * g.s;
  int c = 0;
  for (; c + UPB_NC <= n; c += UPB_NC) {
    i64 px[UPB_NC];
#pragma unroll
    for (int j = 0; j < UPB_NC; ++j) px[j] = g.child(b, u, v, c + j);
    f(Int<UPB_NC>(), px);
  }
  for (; c < n; ++c) {
    const i64 px[1] = {g.child(b, u, v, c)};
    f(Int<1>(), px);
  }
}

// Prefetch the rows (row stride ld) of the children of (b, u, v), the next item (CPU build only): the
// per-item work is short, and the hardware prefetcher alone left the kernels waiting on these streams.
template <typename T>
__device__ __forceinline__ void prefetch_children(const T* x, const Geo& g, i64 b, i64 u, i64 v, i64 ld) {
#if !defined(__CUDACC__)
  if (v >= g.W) return;
  const char* p0 = (const char*)(x + g.child(b, u, v, 0) * ld);
  const i64 bytes = ld * (i64)sizeof(T) * g.s;  // s children side by side
  for (int ci = 0; ci < g.s; ++ci)
    for (i64 o = 0; o < bytes; o += 64) UPB_PREFETCH(p0 + (ci * g.OW * ld * (i64)sizeof(T) + o));
#endif
}

// Channel chunks of UPB_VPT·UPB_LANES; full chunks run without bounds checks.
template <typename F>
__device__ __forceinline__ void chunks(i64 C, F&& body) {
  const i64 CH = (i64)UPB_VPT * UPB_LANES;
  i64 c0 = 0;
  for (; c0 + CH <= C; c0 += CH) body(c0, Flag<false>());
  if (c0 < C) body(c0, Flag<true>());
}

// out_n = Σ_m w(n, m) · v(slot m) over C channels, for NC high-res pixels sharing parent (b, u, vv); w gives
// the weights, ldv is v's row stride.
template <int NC, typename T, typename Wf>
__device__ __forceinline__ void aggregate(const Wf& w, const T* __restrict__ v, T* const* orow, const Geo& g, i64 b,
                                          i64 u, i64 vv, i64 C, i64 ldv, int lane) {
  typedef typename Acc<T>::type A;
  chunks(C, [&](i64 c0, auto tail) {
    constexpr bool TAIL = decltype(tail)::value;
    Regs<T, A, NC> acc;
    acc.zero();
    for (int a = 0; a < g.K; ++a) {
      const i64 uu = u + a - g.r;
      if (uu < 0 || uu >= g.H) continue;  // off-map slots hold zero values; their weight only enters Σ
      for (int bb = 0; bb < g.K; ++bb) {
        const i64 wv = vv + bb - g.r;
        if (wv < 0 || wv >= g.W) continue;
        A wt[NC];
#pragma unroll
        for (int n = 0; n < NC; ++n) wt[n] = w(n, a * g.K + bb);
        acc.template axpy<TAIL>(wt, v + ((b * g.H + uu) * g.W + wv) * ldv, c0, C, lane);
      }
    }
#pragma unroll
    for (int n = 0; n < NC; ++n) acc.template store<TAIL>(n, orow[n], c0, C, lane);
  });
}

// Similarities (D channels) of NC high-res pixels (query rows qrow[n], common parent (b, u, v)) with their K²
// window of k (row stride ldk), into out[n][0..KK). Four slots at a time, then (GPU) one reduce-scatter over
// the warp per pixel. An off-map slot reads the centre row and stores 0.
template <int NC, typename T, typename O>
__device__ __forceinline__ void sims(const T* const* qrow, const T* __restrict__ k, O* const* out, const Geo& g,
                                     i64 b, i64 u, i64 v, i64 D, i64 ldk, int lane) {
  typedef typename Acc<T>::type A;
  const i64 centre = (b * g.H + u) * g.W + v;
  int a = 0, bb = 0;  // window position of slot m0
  for (int m0 = 0; m0 < g.KK; m0 += 4) {
    i64 row[4];
    const T* ks[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      row[j] = m0 + j < g.KK ? g.low(b, u + a - g.r, v + bb - g.r) : -1;
      ks[j] = k + (row[j] < 0 ? centre : row[j]) * ldk;
      if (++bb == g.K) bb = 0, ++a;
    }
    A t[NC][4];
    dots<NC>(qrow, ks, D, lane, t);
#if UPB_LANES > 1
    const int j = (lane >> 3) & 3;
    const i64 rj = j == 0 ? row[0] : j == 1 ? row[1] : j == 2 ? row[2] : row[3];
#pragma unroll
    for (int n = 0; n < NC; ++n) {
      const A tot = warp_sum4(t[n][0], t[n][1], t[n][2], t[n][3], lane);
      if ((lane & 7) == 0 && m0 + j < g.KK) st(out[n] + m0 + j, rj < 0 ? A(0) : tot);
    }
#else
    for (int n = 0; n < NC; ++n)
      for (int j = 0; j < 4 && m0 + j < g.KK; ++j) st(out[n] + m0 + j, row[j] < 0 ? A(0) : t[n][j]);
#endif
  }
}

// Channel groups (CARAFE's G; 1 for SAPA): the tensors' rows hold G groups side by side — q and k of
// G·D channels, S of G·K² — and block row blockIdx.y works on group blockIdx.y.
template <typename T>
__device__ __forceinline__ void sim_kernel(const T* __restrict__ q, const T* __restrict__ k, T* __restrict__ S,
                                           i64 B, i64 H, i64 W, i64 D, i64 K, i64 s, i64 G) {
  const Geo g(H, W, K, s);
  const int lane = threadIdx.x % UPB_LANES;
  const i64 grp = blockIdx.y, ld = G * D, ldS = G * g.KK;
  if (grp >= G) return;
  q += grp * D, k += grp * D, S += grp * g.KK;
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, v = it.v;
    prefetch_children(q, g, b, u, v + UPB_PF_DIST, ld);
    child_groups(g, b, u, v, [&](auto nc, const auto& px) {
      constexpr int NC = decltype(nc)::value;
      const T* qr[NC];
      T* sr[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) qr[n] = q + px[n] * ld, sr[n] = S + px[n] * ldS;
      sims<NC>(qr, k, sr, g, b, u, v, D, ld, lane);
    });
  }
}

// Groups as in sim_kernel: A rows of G·K², v and out rows of G·C (C channels per group).
template <typename T>
__device__ __forceinline__ void atn_kernel(const T* __restrict__ Aw, const T* __restrict__ v, T* __restrict__ out,
                                           i64 B, i64 H, i64 W, i64 C, i64 K, i64 s, i64 G) {
  typedef typename Acc<T>::type A;
  const Geo g(H, W, K, s);
  const int lane = threadIdx.x % UPB_LANES;
  const i64 grp = blockIdx.y, ld = G * C, ldA = G * g.KK;
  if (grp >= G) return;
  Aw += grp * g.KK, v += grp * C, out += grp * C;
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, vv = it.v;
    child_groups(g, b, u, vv, [&](auto nc, const auto& px) {
      constexpr int NC = decltype(nc)::value;
      const T* ar[NC];
      T* orow[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) ar[n] = Aw + px[n] * ldA, orow[n] = out + px[n] * ld;
      aggregate<NC>([&](int n, int m) { return (A)upb::ld(ar[n] + m); }, v, orow, g, b, u, vv, C, ld, lane);
    });
  }
}

// Gather form of the transpose of atn: each low-res pixel collects from the high-res pixels whose windows
// hold it, so no two threads write one element.
// Groups as in atn_kernel; grid.y = G × (channel chunks of a group), chunk-major.
template <typename T>
__device__ __forceinline__ void atn_t_kernel(const T* __restrict__ Aw, const T* __restrict__ gr, T* __restrict__ out,
                                             i64 B, i64 H, i64 W, i64 C, i64 K, i64 s, i64 G) {
  typedef typename Acc<T>::type A;
  const Geo g(H, W, K, s);
  const int lane = threadIdx.x % UPB_LANES;
  const i64 CH = (i64)UPB_VPT_T * UPB_LANES;
  const unsigned nch = (unsigned)((C + CH - 1) / CH), grp = blockIdx.y / nch;  // 32-bit: grid.y < 65536
  const i64 c0 = (i64)(blockIdx.y - grp * nch) * CH, ld = G * C, ldA = G * g.KK;
  if (grp >= G) return;  // the launcher's grid.y is G·nch; never index past the last group
  Aw += grp * g.KK, gr += grp * C, out += grp * C;
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, v = it.v;
    auto body = [&](auto tail) {
      constexpr bool TAIL = decltype(tail)::value;
      Regs<T, A, 1, UPB_VPT_T> acc;
      acc.zero();
      for (int a = 0; a < g.K; ++a) {
        const i64 pu = u + g.r - a;  // the parent whose slot (a, ·) is row u
        if (pu < 0 || pu >= g.H) continue;
        for (int bb = 0; bb < g.K; ++bb) {
          const i64 pv = v + g.r - bb;
          if (pv < 0 || pv >= g.W) continue;
          const int m = a * g.K + bb;
          i64 px = (b * g.OH + pu * g.s) * g.OW + pv * g.s;  // first child; then row by row
          for (int ci = 0; ci < g.s; ++ci, px += g.OW) {
            for (int cj = 0; cj < g.s; ++cj) {
              const A wt = upb::ld(Aw + (px + cj) * ldA + m);
              acc.template axpy<TAIL>(&wt, gr + (px + cj) * ld, c0, C, lane);
            }
          }
        }
      }
      acc.template store<TAIL>(0, out + it.index() * ld, c0, C, lane);
    };
    if (c0 + CH <= C) body(Flag<false>());
    else body(Flag<true>());
  }
}

}  // namespace win
}  // namespace upb
