// Band windows for the window_attn family (included at the end of window_attn.cu; builds on its wa:: helpers).
//
// A band window gives every high-res ROW i its own low-res row range [lo_i, hi_i) and every COLUMN j its own
// column range [lo_j, hi_j); output (i, j) sees their product, every other key is MASKED (excluded from the
// softmax: logit −inf, weight 0), unlike the zero rule's off-map slot that keeps a 0 logit (AnyUp's window, a
// fraction of the map around the query's position, operators/anyup.py). The s² children of a parent (p, q) share
// the UNION of their bands: a Ku×Kv slot grid starting at (U0[p], V0[q]), slot m = a·Kv + b at (U0[p]+a, V0[q]+b);
// so the wa:: helpers, and the sim/atn bodies and the CPU atn_t scatter themselves, run unchanged on a zero-rule
// Win over the grid offsets {(a, b)} with the parent's slot rows set at the union's corner (Band::rows). A child's mask is its band relative to that corner. Slots past the map are off every
// child's band (bands lie in the map): masked, and the zero rule skips their rows.
//
// One int64 table (built by window_attn_kernels.Band) holds, in order:
//   off[2M]            the grid offsets (a, b), m = a·Kv + b (what Win reads)
//   U0[H], V0[W]       each parent row's / column's union start
//   RA[2·sH], CA[2·sW] each child row's / column's band relative to its parent's union start: [lo, hi)
//   UR[2H], VR[2W]     for t in the map, the first and last parent whose union starts at t (first > last: none);
//                      starts never decrease, so these are ranges: atn_t's gather inversion walks them
//
//   band_sim   S[i,j,g·M+m] = scale · <q_g(i,j), k_g(slot m)>   (every grid slot, unmasked; 0 past the map)
//   band_atn   out_g(i,j)   = Σ_m A[i,j,g·M+m] · v_g(slot m)
//   band_atn_t out_g(u,v)   = Σ over (i,j,m) whose slot m is (u,v) of A[i,j,g·M+m] · gr_g(i,j)   (gather, no atomics)
//   band_fused_mean out(i,j) = Σ_m mean_g softmax_m(masked scale · <q_g, k_g(slot m)>) · v(slot m)
//                              (G heads of D channels; one weight per slot for all C channels of v: AnyUp)
// The unfused chain masks in torch (−inf added per row and column), so sim/atn/atn_t stay exact transposes of
// each other and the backward is the family's: d sim = (atn(scale·dS, k), atn_t(scale·dS, q)); d atn =
// (sim(dout, v), atn_t(A, dout)).
#pragma once

namespace upb {
namespace wa {

struct Band {
  Win wn;  // zero rule over the Ku×Kv grid offsets
  const i64 *u0, *v0, *ra, *ca, *ur, *vr;
  int Kv;

  __device__ Band(const i64* tab, i64 M, i64 Kv_, i64 H, i64 W, i64 s)
      : wn(tab, M, 0, H, W), u0(tab + 2 * M), v0(u0 + H), ra(v0 + W), ca(ra + 2 * H * s), ur(ca + 2 * W * s),
        vr(ur + 2 * H), Kv((int)Kv_) {
    UPB_DEVICE_CHECK(Kv_ >= 1 && M % Kv_ == 0, "band window: M is not a multiple of Kv");
  }
  // The slot rows of parent (b, u, v): the grid at its union's corner (rows past the map: -1).
  __device__ __forceinline__ void rows(SlotRows& r, i64 b, i64 u, i64 v) const { r.set(wn, b, u0[u], v0[v]); }
};

// Gather form of band_atn's transpose; grid.y as win::TChunk says. Low-res (u, v) is
// slot (a, b) of the parents whose union starts at (u − a, v − b): one range per axis (UR, VR; clamped to the
// map, so a malformed table cannot index past it). Fixed order: deterministic.
template <typename T>
__device__ __forceinline__ void band_atn_t_kernel(const T* __restrict__ Aw, const T* __restrict__ gr,
                                                  T* __restrict__ out, const i64* tab, i64 B, i64 H, i64 W, i64 C,
                                                  i64 M, i64 Kv, i64 s, i64 G) {
  typedef typename Acc<T>::type A;
  const Geo g(H, W, 1, s);
  const Band bd(tab, M, Kv, H, W, s);
#if UPB_CPU_VEC && UPB_T_SCATTER_BYTES
  if (Scatter<T, A>::run(Aw, gr, out, bd, g, B, C, G)) return;  // the CPU build's scatter (window_attn.cu)
#endif
  const int lane = threadIdx.x % UPB_LANES;
  const win::TChunk tc(C);
  const i64 ld = G * C, ldA = G * M;
  const unsigned grp = tc.grp;
  const int Ku = (int)(M / Kv);
  if (grp >= G) return;
  Aw += grp * M, gr += grp * C, out += grp * C;
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, v = it.v;
    tc.run([&](i64 c0, auto tail) {
      constexpr bool TAIL = decltype(tail)::value;
      Regs<T, A, 1, UPB_VPT_T> acc;
      acc.zero();
      for (int a = 0; a < Ku && u - a >= 0; ++a) {
        const i64 u0 = clampi(bd.ur[2 * (u - a)], 0, H), u1 = clampi(bd.ur[2 * (u - a) + 1], -1, H - 1);
        for (int bb = 0; bb < bd.Kv && v - bb >= 0; ++bb) {
          const i64 v0 = clampi(bd.vr[2 * (v - bb)], 0, W), v1 = clampi(bd.vr[2 * (v - bb) + 1], -1, W - 1);
          const int m = a * bd.Kv + bb;
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
      }
      acc.template store<TAIL>(0, out + it.index() * ld, c0, C, lane);
    });
  }
}

// Fused, head-averaged: per group of children, the weights wt[n][m] start at 0 on the child's band and −1 off it
// (the mask, computed once); each head's M logits go to scratch e, softmax over the band with max subtraction in
// the accumulation type, wt += p/G; then one aggregation of v's C channels with max(wt, 0). No M-map in memory.
template <typename T>
__device__ __forceinline__ void band_fused_mean_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                                       const T* __restrict__ v, T* __restrict__ out, const i64* tab,
                                                       i64 B, i64 H, i64 W, i64 D, i64 C, i64 M, i64 Kv, i64 s, i64 G,
                                                       i64 scale_bits) {
  typedef typename Acc<T>::type A;
  const Geo g(H, W, 1, s);
  const Band bd(tab, M, Kv, H, W, s);
  const A scale = (A)bits_to_double(scale_bits);
  const int lane = threadIdx.x % UPB_LANES;
  const i64 ldq = G * D;
  if (blockIdx.y > 0) return;
  UPB_WARP_SCRATCH(A, sc, 2 * UPB_NC * UPB_MAX_KK);  // [0, NC·MAX_KK): logits; then the weights
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, vv = it.v;
    prefetch_slices(q, g, b, u, vv + UPB_PF_DIST, ldq, ldq);
    SlotRows rows;
    bd.rows(rows, b, u, vv);
    const i64 first = g.child(b, u, vv, 0);
    win::child_groups(g, b, u, vv, [&](auto nc, const auto& px) {
      constexpr int NC = decltype(nc)::value;
      A* e[NC];
      A* wt[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) {
        e[n] = sc + n * UPB_MAX_KK, wt[n] = sc + (UPB_NC + n) * UPB_MAX_KK;
        i64 cj = px[n] - first;  // < s·OW: the child's row ci and column cj under the parent, without a division
        int ci = 0;
        while (cj >= g.OW) cj -= g.OW, ++ci;
        const i64* ra = bd.ra + 2 * (u * g.s + ci);
        const i64* ca = bd.ca + 2 * (vv * g.s + cj);
        const i64 a0 = ra[0], a1 = ra[1], b0 = ca[0], b1 = ca[1];
        for (int m = lane; m < bd.wn.M; m += UPB_LANES) {
          const int a = m / bd.Kv, bb = m - a * bd.Kv;
          wt[n][m] = (a >= a0 && a < a1 && bb >= b0 && bb < b1) ? A(0) : A(-1);
        }
      }
      for (int h = 0; h < (int)G; ++h) {
        const T* qr[NC];
#pragma unroll
        for (int n = 0; n < NC; ++n) qr[n] = q + px[n] * ldq + h * D;
        sims<NC, false>(qr, k + h * D, e, bd.wn, rows, it.index(), D, ldq, A(1), lane);  // scaled in the softmax
        UPB_SYNCWARP();
#pragma unroll
        for (int n = 0; n < NC; ++n) {
          A* x = e[n];
          const A* w = wt[n];
          A mx = A(-3.0e38f);
          for (int m = lane; m < bd.wn.M; m += UPB_LANES)
            if (w[m] >= A(0)) mx = amax(mx, x[m]);
          mx = warp_max(mx);
          A sum = 0;
          for (int m = lane; m < bd.wn.M; m += UPB_LANES) {
            const A p = w[m] >= A(0) ? ex((x[m] - mx) * scale) : A(0);
            x[m] = p;
            sum += p;
          }
          const A inv = A(1) / (warp_sum(sum) * (A)G);  // the head mean's 1/G folded in
          for (int m = lane; m < bd.wn.M; m += UPB_LANES)
            if (w[m] >= A(0)) wt[n][m] += x[m] * inv;  // this lane's own slots: no barrier needed
        }
        UPB_SYNCWARP();  // the weights are complete (aggregate reads every slot), and e is free for the next head
      }
      T* orow[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) orow[n] = out + px[n] * C;
      aggregate<NC>([&](int n, int m) { return amax(wt[n][m], A(0)); }, v, orow, bd.wn, rows, C, C, lane);
      UPB_SYNCWARP();  // every lane has read wt before the next group rewrites it
    });
  }
}

}  // namespace wa
}  // namespace upb

#define UPB_WA_BAND_ENTRIES(SUF, T)                                                                                \
  UPB_ENTRY(window_attn_band_sim_##SUF,                                                                            \
            (const T* q, const T* k, T* S, const i64* tab, i64 B, i64 H, i64 W, i64 D, i64 M, i64 Kv, i64 s, i64 G, \
             i64 scale),                                                                                           \
            upb::wa::sim_body<T>(q, k, S, upb::wa::Band(tab, M, Kv, H, W, s), upb::win::Geo(H, W, 1, s), B, D, G,     \
                                 scale))                                                                            \
  UPB_ENTRY(window_attn_band_atn_##SUF,                                                                            \
            (const T* A, const T* v, T* out, const i64* tab, i64 B, i64 H, i64 W, i64 C, i64 M, i64 Kv, i64 s,     \
             i64 G),                                                                                               \
            upb::wa::atn_body<T>(A, v, out, upb::wa::Band(tab, M, Kv, H, W, s), upb::win::Geo(H, W, 1, s), B, C, G))  \
  UPB_ENTRY(window_attn_band_atn_t_##SUF,                                                                          \
            (const T* A, const T* g, T* out, const i64* tab, i64 B, i64 H, i64 W, i64 C, i64 M, i64 Kv, i64 s,     \
             i64 G),                                                                                               \
            upb::wa::band_atn_t_kernel<T>(A, g, out, tab, B, H, W, C, M, Kv, s, G))                                \
  UPB_ENTRY(window_attn_band_fused_mean_##SUF,                                                                     \
            (const T* q, const T* k, const T* v, T* out, const i64* tab, i64 B, i64 H, i64 W, i64 D, i64 C, i64 M, \
             i64 Kv, i64 s, i64 G, i64 scale),                                                                     \
            upb::wa::band_fused_mean_kernel<T>(q, k, v, out, tab, B, H, W, D, C, M, Kv, s, G, scale))

UPB_WA_BAND_ENTRIES(f64, double)
UPB_WA_BAND_ENTRIES(f32, float)
UPB_WA_BAND_ENTRIES(f16, upb::f16)
UPB_WA_BAND_ENTRIES(bf16, upb::bf16)
