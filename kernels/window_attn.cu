// The general window-attention family (docs/kernels.md): one kernel set for every local upsampler whose output
// at high-res pixel (i, j) is a softmax-weighted sum over a window of its parent (⌊i/s⌋, ⌊j/s⌋) on the low-res map.
// SAPA (K×K window, zero rule, one group) and CARAFE/FADE's reassembly (K×K, zero rule, CARAFE's G groups, given
// weights or logits) run on these entries too (operators/sapa_kernels.py, carafe_kernels.py): no per-operator copy.
//
// Window: M slots, each a low-res offset (du, dv) from the parent (an int64 tensor (M, 2); a K×K window with
// dilation δ is the list {(δ(a − r), δ(b − r))}), M ≤ 225, any integer ratio s ≥ 1, any H×W, and a border rule:
//   0 zero    a slot off the map holds a zero row (SAPA, DESIGN.md §2); computed logits are 0 there
//   1 clamp   the slot's row and column are clamped onto the map (replicate padding: UPLiFT)
//   2 shift   the whole window is moved inwards until it fits the map (neighbourhood attention: NAF); the
//             binding requires the window's extent ≤ the map
// Weights: computed (scale · <q(i,j), k(slot)>) or given (logits from the caller). G groups (heads) side by
// side in each row: q, k rows of G·D, v and out rows of G·C, weight rows of G·M; the group is on grid.y.
//
//   sim    S[i,j,g·M+m] = scale · <q_g(i,j), k_g(slot m)>           (0 for a zero-rule slot off the map)
//   atn    out_g(i,j)   = Σ_m A[i,j,g·M+m] · v_g(slot m)
//   atn_t  out_g(u,v)   = Σ over (i,j,m) whose slot m is (u,v) of A[i,j,g·M+m] · gr_g(i,j)   (gather, no atomics)
//   fused  out_g(i,j)   = atn(softmax_m(sim)) without any M-map in memory
//   fused_given         = atn(softmax_m(L)) for given logits L
// Backward (the binding): d sim = (atn(scale·dS, k), atn_t(scale·dS, q)); d atn = (sim(dout, v), atn_t(A, dout)).
// Every border rule makes a slot's position a monotone function of the parent, so the parents that see a
// low-res pixel through slot m form one range per axis (Win::parents): atn_t loops over it in a fixed order.
// Band windows (a per-output-row/column range with masked keys: AnyUp) are in window_band.cuh, included last.
#include "window.cuh"
// CPU builds: sims of odd parents walk the window's slot groups backwards (a snake along the row), so a parent
// first reads the key rows its left neighbour read last, the ones most likely still in L1 (its 25 rows of 1 KB
// at SAPA's C = 256 are most of L1): sim 0.93–0.95×, SAPA's fused forward 0.97× the time (A/B in one process).
// The same order in atn (slots, or slots and channel chunks) ran 1.05–1.13× slower; atn_t has its own snake.
// CPU builds: sim, the fused forward (computed weights) and the atn_t scatter prefetch the next child group's
// high-res rows (the next parent's after its last group) a few lines per slot group or slot as they go
// (SpreadPf), not all at once when an item starts: sim 0.93–0.97×, SAPA's fused forward 0.91×, atn_t
// 0.85–0.87× the time (A/B in one process); the burst form (64 lines of SAPA's q at once) had made sim slower.
#ifndef UPB_SPREAD_PF
#if UPB_LANES == 1 && !defined(__CUDACC__)
#define UPB_SPREAD_PF 1
#else
#define UPB_SPREAD_PF 0
#endif
#endif
#ifndef UPB_SIM_SNAKE
#if UPB_LANES == 1 && !defined(__CUDACC__)
#define UPB_SIM_SNAKE 1
#else
#define UPB_SIM_SNAKE 0
#endif
#endif

namespace upb {
namespace wa {

using win::Geo;
using win::Pixels;

__device__ __forceinline__ double bits_to_double(i64 b) {
#if defined(__CUDACC__)
  return __longlong_as_double(b);
#else
  double d;
  __builtin_memcpy(&d, &b, 8);
  return d;
#endif
}

__device__ __forceinline__ i64 clampi(i64 x, i64 lo, i64 hi) { return x < lo ? lo : (x > hi ? hi : x); }

struct Win {
  const i64* off;  // (M, 2) offsets
  i64 H, W;
  int M, mode;
  int ua, ub, va, vb;  // shift rule: a parent row p sees the window of row clamp(p, ua, ub) (32-bit: fewer registers)

  __device__ Win(const i64* off_, i64 M_, i64 mode_, i64 H_, i64 W_) : off(off_), H(H_), W(W_), M((int)M_),
                                                                       mode((int)mode_) {
    UPB_DEVICE_CHECK(M_ >= 1 && M_ <= UPB_MAX_KK && mode_ >= 0 && mode_ <= 2, "window slots or border rule out of range");
    i64 lu = 0, hu = 0, lv = 0, hv = 0;
    for (int m = 0; m < M; ++m) {
      const i64 du = off[2 * m], dv = off[2 * m + 1];
      lu = m == 0 || du < lu ? du : lu, hu = m == 0 || du > hu ? du : hu;
      lv = m == 0 || dv < lv ? dv : lv, hv = m == 0 || dv > hv ? dv : hv;
    }
    ua = (int)-lu, ub = (int)(H - 1 - hu), va = (int)-lv, vb = (int)(W - 1 - hv);
    UPB_DEVICE_CHECK(mode != 2 || (ua <= ub && va <= vb), "shift rule: the window is larger than the map");
  }
  // Low-res index along one axis (length n) of slot offset d for parent p, or -1 (zero rule, off the map).
  __device__ __forceinline__ i64 at(i64 p, i64 d, i64 n, i64 a, i64 b) const {
    if (mode == 0) return (p + d >= 0 && p + d < n) ? p + d : -1;
    if (mode == 1) return clampi(p + d, 0, n - 1);
    return clampi(p, a, b) + d;
  }
  // Pixel index of slot m of parent (bb, u, v), or -1.
  __device__ __forceinline__ i64 row(i64 bb, i64 u, i64 v, int m) const {
    const i64 uu = at(u, off[2 * m], H, ua, ub), vv = at(v, off[2 * m + 1], W, va, vb);
    return (uu < 0 || vv < 0) ? -1 : (bb * H + uu) * W + vv;
  }
  // The parents p (one axis, length n) whose slot with offset d is x: [lo, hi] (empty when lo > hi).
  __device__ __forceinline__ void parents(i64 x, i64 d, i64 n, i64 a, i64 b, i64& lo, i64& hi) const {
    const i64 t = x - d;
    if (mode == 0) {
      lo = hi = t;
    } else {
      if (mode == 1) a = -d, b = n - 1 - d;  // clamp(p + d, 0, n−1) = clamp(p, −d, n−1−d) + d
      lo = t <= a ? 0 : t, hi = t >= b ? n - 1 : t;
      if (t < a || t > b) lo = 1, hi = 0;
    }
    lo = lo < 0 ? 0 : lo, hi = hi > n - 1 ? n - 1 : hi;
  }
};

// The slot rows of one parent. CPU fast build: computed once per parent into an array, then reused by all s²
// children and channel chunks (the index arithmetic per slot cost as much as a short row's FMAs there); GPU
// and SIMT builds: computed on the fly (a per-thread array would live in local memory).
struct SlotRows {
#if UPB_LANES == 1
  i64 r[UPB_MAX_KK];
  __device__ __forceinline__ void set(const Win& wn, i64 b, i64 u, i64 v) {
    for (int m = 0; m < wn.M; ++m) r[m] = wn.row(b, u, v, m);
  }
  __device__ __forceinline__ i64 operator()(int m) const { return r[m]; }
#else
  const Win* wn;
  i64 b, u, v;
  __device__ __forceinline__ void set(const Win& w, i64 b_, i64 u_, i64 v_) { wn = &w, b = b_, u = u_, v = v_; }
  __device__ __forceinline__ i64 operator()(int m) const { return wn->row(b, u, v, m); }
#endif
};

// Where a kernel's slot rows come from: a window of offsets around the parent (PlainWin) or a band's slot
// grid at the parent's union corner (Band, window_band.cuh). sim, atn and the CPU atn_t scatter take either.
struct PlainWin {
  Win wn;
  __device__ PlainWin(const i64* off, i64 M, i64 mode, i64 H, i64 W) : wn(off, M, mode, H, W) {}
  __device__ __forceinline__ void rows(SlotRows& r, i64 b, i64 u, i64 v) const { r.set(wn, b, u, v); }
};

// Prefetch (CPU build) the width-element slices (row stride ld) of the s² children of (b, u, v): only this group's
// channels, not whole rows (a whole-row prefetch fetched every group's channels of every child).
template <typename T>
__device__ __forceinline__ void prefetch_slices(const T* x, const Geo& g, i64 b, i64 u, i64 v, i64 ld, i64 width) {
#if !defined(__CUDACC__)
  if (v >= g.W) return;
  const i64 bytes = width * (i64)sizeof(T);
  for (int c = 0; c < g.s * g.s; ++c) {
    const char* p = (const char*)(x + g.child(b, u, v, c) * ld);
    for (i64 o = 0; o < bytes; o += 64) UPB_PREFETCH(p + o);
  }
#endif
}

struct NoPf {
  __device__ __forceinline__ void operator()(int, int) const {}
};

// Prefetch (CPU builds) n rows of `lines` cache lines a few lines at a time: call i of a loop of `calls` fetches
// its share. A burst of all lines at once stalled the kernels that tried it (sim, the fused kernels).
struct SpreadPf {
  const char* p[4];
  int n = 0, lines = 0;
  // rows p[0 … n) of `lines` lines from `ld`-element rows of T starting at the children cn … of parent (b, u, vn)
  template <typename T>
  __device__ __forceinline__ void next_children(const T* x, const Geo& g, i64 b, i64 u, i64 v, int c0, int nc,
                                                i64 ld, i64 width) {
    const int n2 = g.s * g.s, cn = c0 + nc < n2 ? c0 + nc : 0;
    const i64 vn = c0 + nc < n2 ? v : v + 1;
    n = 0, lines = (int)((width * (i64)sizeof(T) + 63) / 64);
    if (vn < g.W)
      for (int j = 0; j < 4 && j < nc && cn + j < n2; ++j)
        p[j] = (const char*)(x + g.child(b, u, vn, cn + j) * ld), n = j + 1;
  }
  __device__ __forceinline__ void operator()(int i, int calls) const {
#if !defined(__CUDACC__)
    const int per = (n * lines + calls - 1) / calls;
    for (int l = i * per; l < (i + 1) * per && l < n * lines; ++l) UPB_PREFETCH(p[l / lines] + (l % lines) * 64);
#endif
  }
};

// out_n = Σ_m w(n, m) · v(slot m) over C channels for NC children of one parent, its slot rows in rows.
template <int NC, typename T, typename Wf>
__device__ __forceinline__ void aggregate(const Wf& w, const T* __restrict__ v, T* const* orow, const Win& wn,
                                          const SlotRows& rows, i64 C, i64 ldv, int lane) {
  typedef typename Acc<T>::type A;
  win::chunks(C, [&](i64 c0, auto tail) {
    constexpr bool TAIL = decltype(tail)::value;
    Regs<T, A, NC> acc;
    acc.zero();
    for (int m = 0; m < wn.M; ++m) {
      const i64 r = rows(m);
      if (r < 0) continue;  // a zero-rule slot off the map: zero values, its weight only enters Σ
      A wt[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) wt[n] = w(n, m);
      acc.template axpy<TAIL>(wt, v + r * ldv, c0, C, lane);
    }
#pragma unroll
    for (int n = 0; n < NC; ++n) acc.template store<TAIL>(n, orow[n], c0, C, lane);
  });
}

// out[n][m] = scale · <q row n, k(slot m)> over D channels (SCALED; else without the scale); four slots at a
// time, then (GPU) one reduce-scatter.
template <int NC, bool SCALED, typename T, typename O, typename A, typename PF = NoPf>
__device__ __forceinline__ void sims(const T* const* qrow, const T* __restrict__ k, O* const* out, const Win& wn,
                                     const SlotRows& rows, i64 centre, i64 D, i64 ldk, A scale, int lane,
                                     bool rev = false, const PF& pf = PF()) {
  // slots m0 … m0 + NY − 1 (NY ≤ 4; past M: computed on the centre row, not stored)
  auto group = [&](int m0, auto ny) UPB_LAMBDA_INLINE {
    constexpr int NY = decltype(ny)::value;
    unsigned off_map = 0;  // bit j: slot m0 + j is off the map or past M (a bit mask, not four row indices:
    const T* ks[4];        // the fp64 fused kernel spilled with those)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const i64 r = j < NY && m0 + j < wn.M ? rows(m0 + j) : -1;
      off_map |= (unsigned)(r < 0) << j;
      ks[j] = k + (r < 0 ? centre : r) * ldk;
    }
    A t[NC][4];
    dots<NC, NY>(qrow, ks, D, lane, t);
#if UPB_LANES > 1
    const int j = (lane >> 3) & 3;
#pragma unroll
    for (int n = 0; n < NC; ++n) {
      const A tot = warp_sum4(t[n][0], t[n][1], t[n][2], t[n][3], lane);
      if ((lane & 7) == 0 && m0 + j < wn.M) st(out[n] + m0 + j, (off_map >> j) & 1 ? A(0) : SCALED ? tot * scale : tot);
    }
#else
    for (int n = 0; n < NC; ++n)
      for (int j = 0; j < NY && m0 + j < wn.M; ++j)
        st(out[n] + m0 + j, (off_map >> j) & 1 ? A(0) : SCALED ? t[n][j] * scale : t[n][j]);
#endif
  };
#if UPB_LANES == 1
  // CPU: whole groups of four, then a last group of only the slots left (25 = 6·4 + 1: three absent slots'
  // products were 11 % of sim's FMAs at K = 5). A GPU warp's lanes split the channels: it keeps groups of four.
#if UPB_CPU_VEC && UPB_VBYTES == 32
  constexpr int GY = NC >= 4 ? 3 : 4;  // AVX2: 4 children × 3 slots hold 12 of 16 registers (4 × 4 would spill)
#else
  constexpr int GY = 4;
#endif
  const int full = wn.M / GY * GY;
  auto tail = [&]() UPB_LAMBDA_INLINE {
    switch (wn.M - full) {
      case 1: group(full, Int<1>()); break;
      case 2: group(full, Int<2>()); break;
      case 3: group(full, Int<3>()); break;
      default: break;
    }
  };
  const int calls = full / GY + 1;
  if (rev) {
    pf(0, calls), tail();
    for (int m0 = full - GY; m0 >= 0; m0 -= GY) pf(m0 / GY + 1, calls), group(m0, Int<GY>());
  } else {
    for (int m0 = 0; m0 < full; m0 += GY) pf(m0 / GY, calls), group(m0, Int<GY>());
    pf(full / GY, calls), tail();
  }
#else
  for (int m0 = 0; m0 < wn.M; m0 += 4) group(m0, Int<4>());
#endif
}

template <typename T, typename WS>
__device__ __forceinline__ void sim_body(const T* __restrict__ q, const T* __restrict__ k, T* __restrict__ S,
                                         const WS& ws, const Geo& g, i64 B, i64 D, i64 G, i64 scale_bits) {
  typedef typename Acc<T>::type A;
  const A scale = (A)bits_to_double(scale_bits);
  const int lane = threadIdx.x % UPB_LANES;
  const i64 grp = blockIdx.y, ld = G * D, M = ws.wn.M, ldS = G * M;
  if (grp >= G) return;
  q += grp * D, k += grp * D, S += grp * M;
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, v = it.v;
    SlotRows rows;
    ws.rows(rows, b, u, v);
    int c0 = 0;
    win::child_groups<UPB_NC_SIM>(g, b, u, v, [&](auto nc, const auto& px) {
      constexpr int NC = decltype(nc)::value;
      const T* qr[NC];
      T* sr[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) qr[n] = q + px[n] * ld, sr[n] = S + px[n] * ldS;
      SpreadPf pf;  // the next child group's query rows (the next parent's after the last group)
      if (UPB_SPREAD_PF) pf.next_children(q, g, b, u, v, c0, NC, ld, D);
      c0 += NC;
      sims<NC, true>(qr, k, sr, ws.wn, rows, it.index(), D, ld, scale, lane, UPB_SIM_SNAKE && (v & 1), pf);
    });
  }
}

template <typename T, typename WS>
__device__ __forceinline__ void atn_body(const T* __restrict__ Aw, const T* __restrict__ v, T* __restrict__ out,
                                         const WS& ws, const Geo& g, i64 B, i64 C, i64 G) {
  typedef typename Acc<T>::type A;
  const int lane = threadIdx.x % UPB_LANES;
  const i64 grp = blockIdx.y, ld = G * C, M = ws.wn.M, ldA = G * M;
  if (grp >= G) return;
  Aw += grp * M, v += grp * C, out += grp * C;
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, vv = it.v;
    SlotRows rows;
    ws.rows(rows, b, u, vv);
    win::child_groups(g, b, u, vv, [&](auto nc, const auto& px) {
      constexpr int NC = decltype(nc)::value;
      const T* ar[NC];
      T* orow[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) ar[n] = Aw + px[n] * ldA, orow[n] = out + px[n] * ld;
      aggregate<NC>([&](int n, int m) { return (A)upb::ld(ar[n] + m); }, v, orow, ws.wn, rows, C, ld, lane);
    });
  }
}

#if UPB_CPU_VEC && UPB_T_SCATTER_BYTES

// atn_t as a scatter (CPU builds; fp32 and fp64, whose outputs can hold the running sums). The gather form
// reads each high-res row once for every low-res pixel whose window holds its parent (K² times), from rows whose
// power-of-two strides share cache sets; it ran at ~12 % of the FMA peak. Here an item owns one part of one
// group's channels (grid.x = G × parts; a part per thread, in whole UPB_T_SCATTER_BYTES chunks so that no two
// parts share a cache line): it zeroes its part of the output, walks the parents in order, and adds
// Σ_n A[n, m]·g[n] over four children at a time into the row of every slot m. Each high-res row and weight row
// is read once, in order; the rows of outputs being summed stay in cache. Deterministic: every output sums its
// terms in (parent, child group, slot) order whatever the number of parts, and parts write disjoint channels.
template <typename T, typename WS>
__device__ __forceinline__ void atn_t_scatter(const T* __restrict__ Aw, const T* __restrict__ gr, T* __restrict__ out,
                                              const WS& ws, const Geo& g, i64 B, i64 C, i64 G) {
  static_assert(UPB_WARPS == 1, "the scatter's items are blocks: grid.x = G × parts, one item a block");
  const Win& wn = ws.wn;
  typedef typename Vec<T>::type V;
  enum { N = Vec<T>::N, CW = UPB_T_SCATTER_BYTES / sizeof(T) > N ? UPB_T_SCATTER_BYTES / sizeof(T) : N };
  const i64 parts = gridDim.x / G > 0 ? gridDim.x / G : 1, grp = blockIdx.x / parts, part = blockIdx.x % parts;
  const i64 nch = (C + CW - 1) / CW, k0 = part * nch / parts, k1 = (part + 1) * nch / parts;
  const i64 ld = G * C, ldA = G * wn.M, P = B * g.H * g.W;
  if (grp >= G || k0 >= k1) return;
  Aw += grp * wn.M, gr += grp * C, out += grp * C;
  const i64 cbeg = k0 * CW, cend = k1 * CW < C ? k1 * CW : C;
  for (i64 p = 0; p < P; ++p)
    for (i64 c = cbeg; c < cend; ++c) out[p * ld + c] = T(0);
  const int n2 = g.s * g.s;
  SlotRows rows;
  for (i64 b = 0; b < B; ++b)
    for (i64 u = 0; u < g.H; ++u)
      for (i64 v = 0; v < g.W; ++v) {
        ws.rows(rows, b, u, v);
        for (int c = 0; c < n2; c += 4) {
          const int nc = n2 - c < 4 ? n2 - c : 4;
          const T* a[4];
          const T* x[4];
          for (int n = 0; n < 4; ++n) {
            const i64 px = g.child(b, u, v, c + (n < nc ? n : 0));
            a[n] = Aw + px * ldA, x[n] = gr + px * ld;
          }
          // Slot-major, then the part's channels: consecutive stores go to one row, so no load waits on an
          // earlier store whose address matches it modulo 4 KB (the rows of a window are W·C·4 bytes apart, often a
          // multiple of 4 KB; chunk-major order made every slot's read-modify-write wait on the previous slots').
          SpreadPf pf;  // the next child group's grad rows, a few lines a slot
          if (UPB_SPREAD_PF) pf.next_children(gr + cbeg, g, b, u, v, c, 4, ld, cend - cbeg);
          for (int m = 0; m < wn.M; ++m) {
            pf(m, wn.M);
            const i64 r = rows(m);
            if (r < 0) continue;  // a zero-rule slot off the map
            T* o = out + r * ld;
            i64 c0 = cbeg;
            if (nc == 4) {
              const T w0 = a[0][m], w1 = a[1][m], w2 = a[2][m], w3 = a[3][m];
              for (; c0 + N <= cend; c0 += N) {
                V y, x0 = vld(x[0] + c0), x1 = vld(x[1] + c0), x2 = vld(x[2] + c0), x3 = vld(x[3] + c0);
                __builtin_memcpy(&y, o + c0, sizeof y);
                y += w0 * x0, y += w1 * x1, y += w2 * x2, y += w3 * x3;
                __builtin_memcpy(o + c0, &y, sizeof y);  // read again by later parents: no streaming store
              }
            }
            for (int n = 0; n < nc; ++n) {  // fewer than four children left, or the channels' tail
              const T w = a[n][m];
              for (i64 ch = c0; ch < cend; ++ch) o[ch] += w * x[n][ch];
            }
          }
        }
      }
}

// atn_t_scatter for T = its accumulation type, else nothing (false): 16-bit outputs cannot hold fp32 sums.
template <typename T, typename A> struct Scatter {
  template <typename WS>
  __device__ static bool run(const T*, const T*, T*, const WS&, const Geo&, i64, i64, i64) { return false; }
};
template <typename T> struct Scatter<T, T> {
  template <typename WS>
  __device__ static bool run(const T* Aw, const T* gr, T* out, const WS& ws, const Geo& g, i64 B, i64 C, i64 G) {
    atn_t_scatter<T>(Aw, gr, out, ws, g, B, C, G);
    return true;
  }
};
#endif

// Gather form of atn's transpose; grid.y as win::TChunk says.
template <typename T>
__device__ __forceinline__ void atn_t_kernel(const T* __restrict__ Aw, const T* __restrict__ gr, T* __restrict__ out,
                                             const i64* off, i64 B, i64 H, i64 W, i64 C, i64 M, i64 s, i64 G,
                                             i64 mode) {
  typedef typename Acc<T>::type A;
  const Geo g(H, W, 1, s);
  const PlainWin pw(off, M, mode, H, W);
  const Win& wn = pw.wn;
  const int lane = threadIdx.x % UPB_LANES;
#if UPB_CPU_VEC && UPB_T_SCATTER_BYTES
  if (Scatter<T, A>::run(Aw, gr, out, pw, g, B, C, G)) return;
#endif
  const win::TChunk tc(C);
  const i64 CH = tc.CH, ld = G * C, ldA = G * M;
  const unsigned grp = tc.grp;
  if (grp >= G) return;
  Aw += grp * M, gr += grp * C, out += grp * C;
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, v = it.v;
    tc.run([&](i64 c0, auto tail) {
      constexpr bool TAIL = decltype(tail)::value;
      Regs<T, A, 1, UPB_VPT_T> acc;
      acc.zero();
#if UPB_LANES == 1
      // CPU fast build, zero rule: one parent per slot, its s² children at fixed strides. The general range
      // walk below cost several times the 4·s² FMAs of a slot in scalar bookkeeping there.
      if (wn.mode == 0) {
        // Prefetch the rows only this walk's later items need: the parents in the leading column (v + va)
        // of the item UPB_PF_DIST ahead; without it each item waited on ~20 rows missing in L2.
        const i64 pf = v + UPB_PF_DIST + wn.va;
        if (v + UPB_PF_DIST < W && pf >= 0 && pf < W)
          for (int m = 0; m < wn.M; ++m) {
            const i64 pu = u - wn.off[2 * m];
            if (wn.off[2 * m + 1] != -wn.va || pu < 0 || pu >= H) continue;
            const i64 px = (b * g.OH + pu * g.s) * g.OW + pf * g.s;
            for (int ci = 0; ci < g.s; ++ci)
              for (int cj = 0; cj < g.s; ++cj) {
                const i64 c = px + ci * g.OW + cj;
                const char* rp = (const char*)(gr + c * ld + c0);
                for (i64 o = 0; o < CH * (i64)sizeof(T); o += 64) UPB_PREFETCH(rp + o);
                UPB_PREFETCH(Aw + c * ldA + m);
              }
          }
        // The 2·s·K high-res rows an item gathers (stride OW·ld, often a power of two) share cache sets, more of
        // them than L2 has ways; odd items walk the slots backwards (a snake) so that the rows they reuse are
        // the most recently used under LRU (no gain was measurable on the heavily loaded development VM).
        const bool rev = v & 1;
        for (int mi = 0; mi < wn.M; ++mi) {
          const int m = rev ? wn.M - 1 - mi : mi;
          const i64 pu = u - wn.off[2 * m], pv = v - wn.off[2 * m + 1];
          if (pu < 0 || pu >= H || pv < 0 || pv >= W) continue;
          const i64 px = (b * g.OH + pu * g.s) * g.OW + pv * g.s;
          for (int cii = 0; cii < g.s; ++cii) {
            const int ci = rev ? g.s - 1 - cii : cii;
            const T* ap = Aw + (px + ci * g.OW) * ldA + m;
            const T* rp = gr + (px + ci * g.OW) * ld;
            for (int cj = 0; cj < g.s; ++cj) {
              const A wt = upb::ld(ap + cj * ldA);
              acc.template axpy<TAIL>(&wt, rp + cj * ld, c0, C, lane);
            }
          }
        }
        acc.template store<TAIL>(0, out + it.index() * ld, c0, C, lane);
        return;
      }
#endif
      for (int m = 0; m < wn.M; ++m) {
        i64 u0, u1, v0, v1;
        wn.parents(u, wn.off[2 * m], H, wn.ua, wn.ub, u0, u1);
        wn.parents(v, wn.off[2 * m + 1], W, wn.va, wn.vb, v0, v1);
        for (i64 pu = u0; pu <= u1; ++pu) {
          for (i64 pv = v0; pv <= v1; ++pv) {
            i64 px = (b * g.OH + pu * g.s) * g.OW + pv * g.s;  // first child; then row by row
            for (int ci = 0; ci < g.s; ++ci, px += g.OW) {
              for (int cj = 0; cj < g.s; ++cj) {
                const A wt = upb::ld(Aw + (px + cj) * ldA + m);
                acc.template axpy<TAIL>(&wt, gr + (px + cj) * ld, c0, C, lane);
              }
            }
          }
        }
      }
      acc.template store<TAIL>(0, out + it.index() * ld, c0, C, lane);
    });
  }
}

// e[m] ← exp(scale·(e[m] − max e)) over the M slots of one logit row (the warp's lanes split them); returns
// 1 / Σ e. Max subtraction in the accumulation type.
template <typename A>
__device__ __forceinline__ A softmax_row(A* e, int M, A scale, int lane) {
  A mx = A(-3.0e38f);
  UPB_SIMD_RED(max : mx)
  for (int m = lane; m < M; m += UPB_LANES) mx = amax(mx, e[m]);
  mx = warp_max(mx);
  A sum = 0;
  UPB_SIMD_RED(+ : sum)
  for (int m = lane; m < M; m += UPB_LANES) {
    const A x = ex((e[m] - mx) * scale);
    e[m] = x;
    sum += x;
  }
  return A(1) / warp_sum(sum);
}

#if UPB_CPU_VEC
// The fused kernel's softmax on the CPU fast build (fp32, fp16, bf16: float accumulation): whole float vectors
// over each scratch row (rows UPB_KK_ROW apart, so a row's last vector stays inside its row; lanes past M
// masked), the NC rows of a child group side by side. softmax_row's loops, one row at a time, left its
// reductions and the exp's chain exposed: CARAFE's fused_given takes 0.95–0.96× the time with these, SAPA's
// fused forward 0.96× (A/B in one process, fp32, 64² → 128², C = 256, K = 5).
#define UPB_KK_ROW ((UPB_MAX_KK + 15) / 16 * 16)
typedef int vi __attribute__((vector_size(UPB_VBYTES)));

// ex on every lane: the same exp_reduce and exp_poly, rint as a vector round.
inline vf vex(vf x) {
  x = x < -87.0f ? vf{} - 87.0f : x;
  vf y = x * 1.44269504f;
#if UPB_VBYTES == 64
  const vf n = (vf)_mm512_roundscale_ps((__m512)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  const vf n = (vf)_mm256_round_ps((__m256)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#endif
  return exp_poly(exp_reduce(x, n)) * (vf)((__builtin_convertvector(n, vi) + 127) << 23);
}

inline vi lane_ids() {
#if UPB_VBYTES == 64
  return vi{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#else
  return vi{0, 1, 2, 3, 4, 5, 6, 7};
#endif
}

inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// x reduced over its lanes, the result in every lane (a butterfly: no scalar chain)
template <typename F>
inline vf allreduce(vf x, F op) {
#if UPB_VBYTES == 64
  x = op(x, __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
  x = op(x, __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11));
  x = op(x, __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13));
  return op(x, __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
#else
  x = op(x, __builtin_shufflevector(x, x, 4, 5, 6, 7, 0, 1, 2, 3));
  x = op(x, __builtin_shufflevector(x, x, 2, 3, 0, 1, 6, 7, 4, 5));
  return op(x, __builtin_shufflevector(x, x, 1, 0, 3, 2, 5, 4, 7, 6));
#endif
}

// Softmax of NC scratch rows in place, all rows' steps together (independent chains the core overlaps):
// normalised weights, 0 past M.
template <int NC>
inline void softmax_rows_vec(float* const* sr, int M, float scale) {
  enum { N = Vec<float>::N };
  const vi ids = lane_ids();
  vf mx[NC], sum[NC];
  for (int n = 0; n < NC; ++n) mx[n] = vf{} - 3.0e38f, sum[n] = vf{};
  for (int m0 = 0; m0 < M; m0 += N)
    for (int n = 0; n < NC; ++n) mx[n] = (ids + m0) < M ? vmax(mx[n], vld(sr[n] + m0)) : mx[n];
  for (int n = 0; n < NC; ++n) mx[n] = allreduce(mx[n], vmax);
  for (int m0 = 0; m0 < M; m0 += N)
    for (int n = 0; n < NC; ++n) {
      const vf e = vex((vld(sr[n] + m0) - mx[n]) * scale), y = (ids + m0) < M ? e : vf{};
      __builtin_memcpy(sr[n] + m0, &y, sizeof y);
      sum[n] += y;
    }
  for (int n = 0; n < NC; ++n) sum[n] = 1.0f / allreduce(sum[n], [](vf x, vf y) { return x + y; });
  for (int m0 = 0; m0 < M; m0 += N)
    for (int n = 0; n < NC; ++n) {
      const vf y = vld(sr[n] + m0) * sum[n];
      __builtin_memcpy(sr[n] + m0, &y, sizeof y);
    }
}

#else
#define UPB_KK_ROW UPB_MAX_KK
#endif

#if UPB_CPU_VEC
#ifndef UPB_PACK_CHILDREN
#define UPB_PACK_CHILDREN 16  // the packed path below from this many children a parent (s ≥ 4)
#endif

// f(Int<R>, j) over [0, n) in steps of R, then one step of the R' < R left (register tiles and their tails).
template <int R, typename F>
inline void rest(int left, int j, F& f) {
  if constexpr (R > 0) {
    if (left == R) f(Int<R>(), j);
    else rest<R - 1>(left, j, f);
  }
}
template <int R, typename F>
inline void tiles(int n, F&& f) {
  int j = 0;
  for (; j + R <= n; j += R) f(Int<R>(), j);
  rest<R - 1>(n - j, j, f);
}

// Fused forward of the CPU fast build at high ratios (fp32/fp64; s² ≥ UPB_PACK_CHILDREN children a parent). All
// s² children of a parent share its window, so both products are small GEMMs over them: logits (s² × M) =
// q (s² × D) · keysᵀ (D × M) and out (s² × C) = weights (s² × M) · values (M × C), in 4-child × 3-vector
// register tiles (gemm_tile), NB children at a time: all their logits, their softmax, then all their
// aggregations. The window's rows are first copied into a per-thread buffer: keys transposed (D × Mp), values
// (M × Cp), widths padded to whole vectors with zeros, and a zero-rule slot off the map as a zero row (logit 0,
// no value: the rule itself). In place, the rows lie G·D or G·C elements apart, strides that map them onto a
// few L1 sets (NAF: 81 key rows 1 KB apart share 16 of 64 sets), so every pass over the window missed L1;
// and transposed keys need no horizontal sums (the dot-product form spent ~10 % of its time in them at
// D = 64). The copy costs M·(D + C) per s²·M·(D + C) FMAs. At s = 2 it would cost a quarter of the FMAs, and
// the same register tiles over the rows in place measured 1.5× slower than fused_kernel's (CARAFE, C = 256).
template <bool GIVEN, typename T>
inline void fused_packed(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                         T* __restrict__ out, const Win& wn, const Geo& g, i64 B, i64 D, i64 C, i64 ldq, i64 ldv,
                         T scale) {
  typedef typename Vec<T>::type V;
  enum { N = Vec<T>::N, NB = 16 };
  const int M = wn.M, n2 = g.s * g.s;
  const i64 Mp = (M + N - 1) / N * N, Cp = (C + N - 1) / N * N, kn = GIVEN ? 0 : D * Mp;
  T* const kt = upb_host_scratch<T>(kn + M * Cp + NB * Mp + D);
  T* const vp = kt + kn;
  T* const e = vp + M * Cp;     // NB rows of Mp logits, then weights
  T* const zero = e + NB * Mp;  // a zero key row
  for (i64 d = 0; d < D; ++d) zero[d] = T(0);
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, vv = it.v;
    SlotRows rows;
    rows.set(wn, b, u, vv);
    for (int m = 0; m < M; ++m) {
      const i64 r = rows(m);
      T* dst = vp + m * Cp;
      if (r >= 0) __builtin_memcpy(dst, v + r * ldv, C * sizeof(T));
      for (i64 c = r >= 0 ? C : 0; c < Cp; ++c) dst[c] = T(0);
    }
    if (!GIVEN)
      for (int m0 = 0; m0 < Mp; m0 += N) {
        const T* src[N];
        for (int l = 0; l < N; ++l) {
          const i64 r = m0 + l < M ? rows(m0 + l) : -1;
          src[l] = r < 0 ? zero : k + r * ldq;
        }
        transpose_rows(src, D, kt + m0, Mp);
      }
    for (int c0 = 0; c0 < n2; c0 += NB) {
      const int nb = n2 - c0 < NB ? n2 - c0 : NB;
      // the next block's query (logit) rows, from DRAM: the block's first pass over them waited on every line
      for (int j = c0 + NB; j < c0 + 2 * NB && j < n2; ++j) {
        const char* p = (const char*)(q + g.child(b, u, vv, j) * ldq);
        for (i64 o = 0; o < (GIVEN ? M : D) * (i64)sizeof(T); o += 64) UPB_PREFETCH(p + o);
      }
      if (GIVEN) {
        for (int j = 0; j < nb; ++j) {
          const T* l = q + g.child(b, u, vv, c0 + j) * ldq;
          for (int m = 0; m < M; ++m) e[j * Mp + m] = l[m];
        }
      } else {
        tiles<4>(nb, [&](auto nr, int j) UPB_LAMBDA_INLINE {
          constexpr int NR = decltype(nr)::value;
          const T* qr[NR];
          for (int n = 0; n < NR; ++n) qr[n] = q + g.child(b, u, vv, c0 + j + n) * ldq;
          tiles<3>((int)(Mp / N), [&](auto nv, int i) UPB_LAMBDA_INLINE {
            // scaled in the softmax (scale > 0)
            const T* kc = kt + i * N;
            gemm_tile<NR, decltype(nv)::value>(qr, [&](i64 d) { return kc + d * Mp; }, D,
                                               [&](int n, int x, V y) UPB_LAMBDA_INLINE {
              __builtin_memcpy(e + (j + n) * Mp + (i + x) * N, &y, sizeof y);
            });
          });
        });
      }
      for (int j = 0; j < nb; ++j) {
        T* er = e + j * Mp;
        const T inv = softmax_row(er, M, scale, 0);
        for (int m = 0; m < M; ++m) er[m] *= inv;
      }
      tiles<4>(nb, [&](auto nr, int j) UPB_LAMBDA_INLINE {
        constexpr int NR = decltype(nr)::value;
        const T* wr[NR];
        T* orow[NR];
        for (int n = 0; n < NR; ++n) wr[n] = e + (j + n) * Mp, orow[n] = out + g.child(b, u, vv, c0 + j + n) * ldv;
        tiles<3>((int)(Cp / N), [&](auto nv, int i) UPB_LAMBDA_INLINE {
          const T* vc = vp + i * N;
          gemm_tile<NR, decltype(nv)::value>(wr, [&](i64 m) { return vc + m * Cp; }, M,
                                             [&](int n, int x, V y) UPB_LAMBDA_INLINE {
            const i64 c = (i + x) * N;
            if (c + N <= C) {
              vst(orow[n] + c, y);
            } else {
              for (i64 l = c; l < C; ++l) orow[n][l] = y[l - c];  // the channels' tail
            }
          });
        });
      });
    }
  }
}
#endif

// Fused forward (given logits: scale bits 0x3ff0000000000000 = 1.0): a group of children's M logits (computed: q rows given; given: L rows) go to per-warp scratch,
// softmax with max subtraction in the accumulation type, then the aggregation reads the weights from scratch.
// The scale (> 0, checked by the binding) enters the softmax's exponent: max(scale·x) = scale·max(x), and the
// dot-product loop keeps one fewer live value (the fp64 kernel spilled with it on sm_90).
template <bool GIVEN, typename T>
__device__ __forceinline__ void fused_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                             T* __restrict__ out, const i64* off, i64 B, i64 H, i64 W, i64 D, i64 C,
                                             i64 M, i64 s, i64 G, i64 mode, i64 scale_bits) {
  typedef typename Acc<T>::type A;
  const Geo g(H, W, 1, s);
  const Win wn(off, M, mode, H, W);
  const A scale = (A)bits_to_double(scale_bits);
  const int lane = threadIdx.x % UPB_LANES;
  const i64 grp = blockIdx.y, ldq = G * (GIVEN ? M : D), ldv = G * C;
  if (grp >= G) return;
  q += grp * (GIVEN ? M : D), k += grp * D, v += grp * C, out += grp * C;
#if UPB_CPU_VEC
  if constexpr (sizeof(T) == sizeof(A)) {  // fp32, fp64 (the packed rows are T)
    if (g.s * g.s >= UPB_PACK_CHILDREN)
      return fused_packed<GIVEN, T>(q, k, v, out, wn, g, B, D, C, ldq, ldv, (T)scale);
  }
#endif
  UPB_WARP_SCRATCH(A, sc, UPB_NC * UPB_KK_ROW);
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, vv = it.v;
    if (GIVEN || !UPB_SPREAD_PF) prefetch_slices(q, g, b, u, vv + UPB_PF_DIST, ldq, GIVEN ? M : D);
    SlotRows rows;
    rows.set(wn, b, u, vv);
    int c0 = 0;
    win::child_groups(g, b, u, vv, [&](auto nc, const auto& px) {
      constexpr int NC = decltype(nc)::value;
      const T* qr[NC];
      A* sr[NC];
      T* orow[NC];
      A inv[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) qr[n] = q + px[n] * ldq, sr[n] = sc + n * UPB_KK_ROW, orow[n] = out + px[n] * ldv;
      if (GIVEN) {
#pragma unroll
        for (int n = 0; n < NC; ++n)
          for (int m = lane; m < wn.M; m += UPB_LANES) sr[n][m] = upb::ld(qr[n] + m);
      } else {
        SpreadPf pf;
        if (UPB_SPREAD_PF) pf.next_children(q, g, b, u, vv, c0, NC, ldq, D);
        sims<NC, false>(qr, k, sr, wn, rows, it.index(), D, ldq, A(1), lane,  // scaled in the softmax (scale > 0)
                        UPB_SIM_SNAKE && (vv & 1), pf);
      }
      c0 += NC;
      UPB_SYNCWARP();
#if UPB_CPU_VEC
      if constexpr (sizeof(A) == 4) {  // fp32, fp16, bf16: the rows' softmax on whole vectors, normalised
        softmax_rows_vec<NC>(sr, wn.M, scale);
        return aggregate<NC>([&](int n, int m) { return sr[n][m]; }, v, orow, wn, rows, C, ldv, lane);
      }
#endif
#pragma unroll
      for (int n = 0; n < NC; ++n) {
        inv[n] = softmax_row(sr[n], wn.M, scale, lane);
#if UPB_LANES == 1
        // CPU fast build: normalised once here, not once per channel chunk in the aggregation (the same
        // products; on the GPU this kept one more value live and the fp64 kernel spilled)
        for (int m = 0; m < wn.M; ++m) sr[n][m] *= inv[n];
#endif
      }
      UPB_SYNCWARP();
#if UPB_LANES == 1
      aggregate<NC>([&](int n, int m) { return sr[n][m]; }, v, orow, wn, rows, C, ldv, lane);
#else
      aggregate<NC>([&](int n, int m) { return sr[n][m] * inv[n]; }, v, orow, wn, rows, C, ldv, lane);
#endif
      UPB_SYNCWARP();  // every lane has read sc before the next group overwrites it
    });
  }
}

}  // namespace wa
}  // namespace upb

using upb::i64;

#define UPB_WA_ENTRIES(SUF, T)                                                                                      \
  UPB_ENTRY(window_attn_sim_##SUF,                                                                                  \
            (const T* q, const T* k, T* S, const i64* off, i64 B, i64 H, i64 W, i64 D, i64 M, i64 s, i64 G, i64 mode, \
             i64 scale),                                                                                            \
            upb::wa::sim_body<T>(q, k, S, upb::wa::PlainWin(off, M, mode, H, W), upb::win::Geo(H, W, 1, s), B, D, G,  \
                                 scale))                                                                            \
  UPB_ENTRY(window_attn_atn_##SUF,                                                                                  \
            (const T* A, const T* v, T* out, const i64* off, i64 B, i64 H, i64 W, i64 C, i64 M, i64 s, i64 G,       \
             i64 mode),                                                                                             \
            upb::wa::atn_body<T>(A, v, out, upb::wa::PlainWin(off, M, mode, H, W), upb::win::Geo(H, W, 1, s), B, C, G)) \
  UPB_ENTRY(window_attn_atn_t_##SUF,                                                                                \
            (const T* A, const T* g, T* out, const i64* off, i64 B, i64 H, i64 W, i64 C, i64 M, i64 s, i64 G,       \
             i64 mode),                                                                                             \
            upb::wa::atn_t_kernel<T>(A, g, out, off, B, H, W, C, M, s, G, mode))                                    \
  UPB_ENTRY(window_attn_fused_##SUF,                                                                                \
            (const T* q, const T* k, const T* v, T* out, const i64* off, i64 B, i64 H, i64 W, i64 D, i64 C, i64 M,  \
             i64 s, i64 G, i64 mode, i64 scale),                                                                    \
            upb::wa::fused_kernel<false, T>(q, k, v, out, off, B, H, W, D, C, M, s, G, mode, scale))                \
  UPB_ENTRY(window_attn_fused_given_##SUF,                                                                          \
            (const T* L, const T* v, T* out, const i64* off, i64 B, i64 H, i64 W, i64 C, i64 M, i64 s, i64 G,       \
             i64 mode),                                                                                             \
            upb::wa::fused_kernel<true, T>(L, v, v, out, off, B, H, W, 0, C, M, s, G, mode, 0x3ff0000000000000LL))

UPB_WA_ENTRIES(f64, double)
UPB_WA_ENTRIES(f32, float)
UPB_WA_ENTRIES(f16, upb::f16)
UPB_WA_ENTRIES(bf16, upb::bf16)

// The tiled fused forward (window_tiled.cuh): a GPU design, so built for 32-lane warps only (CUDA and the SIMT,
// weak and race shims); the CPU fast build keeps fused / fused_given above. _i32: 32-bit index arithmetic.
#if UPB_LANES > 1
#include "window_tiled.cuh"

#define UPB_WA_TILED_PARAMS(T) \
  (const T* q, const T* k, const T* v, T* out, const i64* off, i64 B, i64 H, i64 W, i64 D, i64 C, i64 M, i64 s, \
   i64 G, i64 mode, i64 scale, i64 TU, i64 TV, i64 NCB)
#define UPB_WA_TILED_GIVEN_PARAMS(T) \
  (const T* L, const T* v, T* out, const i64* off, i64 B, i64 H, i64 W, i64 C, i64 M, i64 s, i64 G, i64 mode, \
   i64 TU, i64 TV, i64 NCB)
#define UPB_WA_TILED_ENTRIES(SUF, T)                                                                                \
  UPB_ENTRY(window_attn_tiled_##SUF, UPB_WA_TILED_PARAMS(T),                                                         \
            upb::wt::tiled_kernel<false, false, T>(q, k, v, out, off, B, H, W, D, C, M, s, G, mode, scale, TU, TV, NCB)) \
  UPB_ENTRY(window_attn_tiled_i32_##SUF, UPB_WA_TILED_PARAMS(T),                                                     \
            upb::wt::tiled_kernel<false, true, T>(q, k, v, out, off, B, H, W, D, C, M, s, G, mode, scale, TU, TV, NCB))  \
  UPB_ENTRY(window_attn_tiled_given_##SUF, UPB_WA_TILED_GIVEN_PARAMS(T),                                             \
            upb::wt::tiled_kernel<true, false, T>(L, v, v, out, off, B, H, W, 0, C, M, s, G, mode,                   \
                                                  0x3ff0000000000000LL, TU, TV, NCB))                                \
  UPB_ENTRY(window_attn_tiled_given_i32_##SUF, UPB_WA_TILED_GIVEN_PARAMS(T),                                         \
            upb::wt::tiled_kernel<true, true, T>(L, v, v, out, off, B, H, W, 0, C, M, s, G, mode,                    \
                                                 0x3ff0000000000000LL, TU, TV, NCB))

UPB_WA_TILED_ENTRIES(f64, double)
UPB_WA_TILED_ENTRIES(f32, float)
UPB_WA_TILED_ENTRIES(f16, upb::f16)
UPB_WA_TILED_ENTRIES(bf16, upb::bf16)
#endif

#include "window_band.cuh"
