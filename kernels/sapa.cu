// SAPA's kernels (DESIGN.md §2–§3): the window kernels of window.cuh with one group, and the fused forward
//   fused out(i,j) = atn(softmax_m(sim(q, k)), v) without writing S anywhere.
#include "window.cuh"

namespace upb {
namespace win {

template <typename T>
__device__ __forceinline__ void fused_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                             T* __restrict__ out, i64 B, i64 H, i64 W, i64 D, i64 C, i64 K, i64 s) {
  typedef typename Acc<T>::type A;
  const Geo g(H, W, K, s);
  const int lane = threadIdx.x % UPB_LANES;
  UPB_WARP_SCRATCH(A, sc, UPB_NC * UPB_MAX_KK);  // a group's K² similarities, then exp(S - max)
  for (Pixels it(g, B); it.ok(); it.next()) {
    const i64 b = it.b, u = it.u, vv = it.v;
    prefetch_children(q, g, b, u, vv + UPB_PF_DIST, D);
    child_groups(g, b, u, vv, [&](auto nc, const auto& px) {
      constexpr int NC = decltype(nc)::value;
      const T* qr[NC];
      A* sr[NC];
      T* orow[NC];
      A inv[NC];
#pragma unroll
      for (int n = 0; n < NC; ++n) qr[n] = q + px[n] * D, sr[n] = sc + n * UPB_MAX_KK, orow[n] = out + px[n] * C;
      sims<NC>(qr, k, sr, g, b, u, vv, D, D, lane);
      UPB_SYNCWARP();
#pragma unroll
      for (int n = 0; n < NC; ++n) {
        // Softmax over all K² slots, off-map ones included (they hold 0): DESIGN.md §2.
        A* e = sr[n];
        A mx = A(-3.0e38f);
        UPB_SIMD_RED(max : mx)
        for (int m = lane; m < g.KK; m += UPB_LANES) mx = amax(mx, e[m]);
        mx = warp_max(mx);
        A sum = 0;
        UPB_SIMD_RED(+ : sum)
        for (int m = lane; m < g.KK; m += UPB_LANES) {
          const A x = ex(e[m] - mx);
          e[m] = x;
          sum += x;
        }
        inv[n] = A(1) / warp_sum(sum);
      }
      UPB_SYNCWARP();
      aggregate<NC>([&](int n, int m) { return sr[n][m] * inv[n]; }, v, orow, g, b, u, vv, C, C, lane);
      UPB_SYNCWARP();  // every lane has read sc before the next group overwrites it
    });
  }
}

}  // namespace win
}  // namespace upb

using upb::i64;

#define UPB_SAPA_ENTRIES(SUF, T)                                                                          \
  UPB_ENTRY(sapa_sim_##SUF, (const T* q, const T* k, T* S, i64 B, i64 H, i64 W, i64 D, i64 K, i64 s),      \
            upb::win::sim_kernel<T>(q, k, S, B, H, W, D, K, s, 1))                                        \
  UPB_ENTRY(sapa_atn_##SUF, (const T* A, const T* v, T* out, i64 B, i64 H, i64 W, i64 C, i64 K, i64 s),   \
            upb::win::atn_kernel<T>(A, v, out, B, H, W, C, K, s, 1))                                      \
  UPB_ENTRY(sapa_atn_t_##SUF, (const T* A, const T* g, T* out, i64 B, i64 H, i64 W, i64 C, i64 K, i64 s), \
            upb::win::atn_t_kernel<T>(A, g, out, B, H, W, C, K, s, 1))                                    \
  UPB_ENTRY(sapa_fused_##SUF,                                                                             \
            (const T* q, const T* k, const T* v, T* out, i64 B, i64 H, i64 W, i64 D, i64 C, i64 K, i64 s),  \
            upb::win::fused_kernel<T>(q, k, v, out, B, H, W, D, C, K, s))

UPB_SAPA_ENTRIES(f64, double)
UPB_SAPA_ENTRIES(f32, float)
UPB_SAPA_ENTRIES(f16, upb::f16)
UPB_SAPA_ENTRIES(bf16, upb::bf16)
