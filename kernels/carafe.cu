// CARAFE's reassembly (DESIGN.md §2 "Reassembly primitive") on the window kernels of window.cuh, channels-last:
//   out(i,j)[c] = Σ_m M(i,j)[g(c)·K² + m] · x(slot m of (i,j))[c],   G groups of Cg = C/G contiguous channels.
// Forward is atn per group; backward is gather-based and deterministic: dx = atn_t(M, dout) per group, and
// dM(i,j)[g·K² + m] = <dout(i,j), x(slot m)> over the group's channels = sim per group.
// The launcher puts the group on grid.y (times the channel chunks for bwd_x).
#include "window.cuh"

using upb::i64;

#define UPB_CARAFE_ENTRIES(SUF, T)                                                                             \
  UPB_ENTRY(carafe_fwd_##SUF,                                                                                  \
            (const T* x, const T* M, T* out, i64 B, i64 H, i64 W, i64 Cg, i64 K, i64 s, i64 G),                  \
            upb::win::atn_kernel<T>(M, x, out, B, H, W, Cg, K, s, G))                                          \
  UPB_ENTRY(carafe_bwd_x_##SUF,                                                                                \
            (const T* M, const T* dout, T* dx, i64 B, i64 H, i64 W, i64 Cg, i64 K, i64 s, i64 G),                \
            upb::win::atn_t_kernel<T>(M, dout, dx, B, H, W, Cg, K, s, G))                                      \
  UPB_ENTRY(carafe_bwd_m_##SUF,                                                                                \
            (const T* dout, const T* x, T* dM, i64 B, i64 H, i64 W, i64 Cg, i64 K, i64 s, i64 G),                \
            upb::win::sim_kernel<T>(dout, x, dM, B, H, W, Cg, K, s, G))

UPB_CARAFE_ENTRIES(f64, double)
UPB_CARAFE_ENTRIES(f32, float)
UPB_CARAFE_ENTRIES(f16, upb::f16)
UPB_CARAFE_ENTRIES(bf16, upb::bf16)
