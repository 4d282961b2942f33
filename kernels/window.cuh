// Shared plumbing of the window-attention kernel family (kernels/window_attn.cu; docs/kernels.md), channels-last:
// the map geometry of a ratio-s upsampling (Geo), the grid-stride walk over low-res pixels one per warp (Pixels),
// the s² children of a pixel in groups that share every row they load (child_groups), and channel chunks
// (chunks). A warp owns one work item; its lanes stride over contiguous channels (coalesced), UPB_VPT channels
// per lane per chunk live in registers.
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

// f(Int<NC>, px) for the s² children of (b, u, v) in groups of NCG (then one at a time), px[NC] their
// pixel indices: a group shares every key and value row it loads.
template <int NCG = UPB_NC, typename F>
__device__ __forceinline__ void child_groups(const Geo& g, i64 b, i64 u, i64 v, F&& f) {
  const int n = g.s * g.s;
  int c = 0;
  for (; c + NCG <= n; c += NCG) {
    i64 px[NCG];
#pragma unroll
    for (int j = 0; j < NCG; ++j) px[j] = g.child(b, u, v, c + j);
    f(Int<NCG>(), px);
  }
  for (; c < n; ++c) {
    const i64 px[1] = {g.child(b, u, v, c)};
    f(Int<1>(), px);
  }
}

// Channel chunks of UPB_VPT·UPB_LANES; full chunks run without bounds checks.
template <typename F>
__device__ __forceinline__ void chunks(i64 C, F&& body) {
  const i64 CH = (i64)UPB_VPT * UPB_LANES;
  i64 c0 = 0;
  for (; c0 + CH <= C; c0 += CH) body(c0, Flag<false>());
  if (c0 < C) body(c0, Flag<true>());
}

// atn_t's split of a group's channels: its items gather rather than scatter, so each keeps one chunk of
// UPB_VPT_T·UPB_LANES channels in registers; grid.y = G × chunks, chunk-major.
struct TChunk {
  i64 CH, C, c0;
  unsigned grp;
  __device__ explicit TChunk(i64 C_) : CH((i64)UPB_VPT_T * UPB_LANES), C(C_) {
    const unsigned nch = (unsigned)((C + CH - 1) / CH);
    grp = blockIdx.y / nch, c0 = (i64)(blockIdx.y - grp * nch) * CH;
  }
  // body(c0, Flag<tail>): a full chunk runs without bounds checks.
  template <typename F>
  __device__ __forceinline__ void run(F&& body) const {
    if (c0 + CH <= C) body(c0, Flag<false>());
    else body(c0, Flag<true>());
  }
};

}  // namespace win
}  // namespace upb
