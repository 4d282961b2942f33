// What the window_attn kernels' inner loops can reach on this CPU, without the kernels around them
// (docs/kernels.md, "CPU performance"): the AVX2 blocking of the CPU fast build, fp32, C = 256, K = 5.
//
//   atn   2 children × 32 channels (8 ymm accumulators), one slot row a step: 4 row loads, 2 weight
//         broadcasts, 8 FMAs
//   sim   2 children × 4 slots (8 accumulators), 8 channels a step: 4 key loads, 2 query loads, 8 FMAs, over
//         the 25 slots of a window in groups of 4 (the last group: one slot)
//
// An FMA of Zen 3 has 4 cycles of latency and two pipes, so 8 independent accumulators make one step 4 cycles
// at best. Printed: each loop's time and GFLOP/s (useful FLOPs, best of 5), its rows resident in L1/L2 and
// (sim) with the query rows streamed from L3 and from DRAM, as the kernel streams them. No cycle counts: the
// 2-vCPU VM of docs/kernels.md gives no counters, and its clock moved by 2× between runs seconds apart (a
// dependent-add chain measured 1.5 and 2.9 GHz), so run it a few times and compare within one run. Build, run:
//
//   g++ -O3 -march=native benchmarks/cpu_loop_ceiling.cpp -o /tmp/loop_ceiling && /tmp/loop_ceiling
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

typedef float v8 __attribute__((vector_size(32)));
#define PIN(x) __asm__("" : "+v"(x))

static double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
static inline v8 load(const float* p) {
  v8 y;
  memcpy(&y, p, 32);
  return y;
}

// reps × (25 slots: out[2 children][32 channels] += w · v(slot row))
__attribute__((noinline)) void atn_loop(const float* v, const long* rows, const float* w0, const float* w1, float* out,
                                        long reps, long ld) {
  for (long r = 0; r < reps; ++r) {
    v8 a0{}, a1{}, a2{}, a3{}, b0{}, b1{}, b2{}, b3{};
    for (int m = 0; m < 25; ++m) {
      const float* p = v + rows[m] * ld;
      const float x0 = w0[m], x1 = w1[m];
      v8 y = load(p);
      a0 += x0 * y, b0 += x1 * y;
      y = load(p + 8), a1 += x0 * y, b1 += x1 * y;
      y = load(p + 16), a2 += x0 * y, b2 += x1 * y;
      y = load(p + 24), a3 += x0 * y, b3 += x1 * y;
    }
    const v8 s = a0 + a1 + a2 + a3 + b0 + b1 + b2 + b3;
    memcpy(out, &s, 32);
    __asm__ volatile("" : : "r"(out) : "memory");
  }
}

// reps × (2 children of parent r % npar: 25 dot products of 256 channels each), query rows 2·256 floats a parent
__attribute__((noinline)) void sim_loop(const float* q, const float* k, const long* rows, float* out, long reps,
                                        long npar) {
  const long D = 256;
  for (long r = 0; r < reps; ++r) {
    const long par = r % npar;
    const float* q0 = q + par * 2 * D;
    const float* q1 = q0 + D;
    for (int m0 = 0; m0 < 25; m0 += 4) {
      const int ny = 25 - m0 < 4 ? 25 - m0 : 4;
      const float* ks[4];
      for (int j = 0; j < 4; ++j) ks[j] = k + (rows[m0 + (j < ny ? j : 0)] + par) * D;
      v8 s[2][4] = {};
      if (ny == 4) {
        for (long c = 0; c < D; c += 8) {
          v8 y0 = load(ks[0] + c), y1 = load(ks[1] + c), y2 = load(ks[2] + c), y3 = load(ks[3] + c);
          PIN(y0);
          PIN(y1);
          PIN(y2);
          PIN(y3);
          v8 x0 = load(q0 + c);
          PIN(x0);
          s[0][0] += x0 * y0, s[0][1] += x0 * y1, s[0][2] += x0 * y2, s[0][3] += x0 * y3;
          v8 x1 = load(q1 + c);
          PIN(x1);
          s[1][0] += x1 * y0, s[1][1] += x1 * y1, s[1][2] += x1 * y2, s[1][3] += x1 * y3;
        }
      } else {
        for (long c = 0; c < D; c += 8) {
          const v8 y0 = load(ks[0] + c);
          s[0][0] += load(q0 + c) * y0, s[1][0] += load(q1 + c) * y0;
        }
      }
      const v8 t = s[0][0] + s[0][1] + s[0][2] + s[0][3] + s[1][0] + s[1][1] + s[1][2] + s[1][3];
      memcpy(out + m0, &t, 32);
      __asm__ volatile("" : : "r"(out) : "memory");
    }
  }
}

template <typename F> static double best_of(int n, F&& f) {
  double best = 1e30;
  for (int i = 0; i < n; ++i) {
    const double t0 = now();
    f();
    best = std::min(best, now() - t0);
  }
  return best;
}

int main() {
  const long W = 64, C = 256;  // a 64-wide low-res map of 256 channels: window rows 64 KB apart
  long rows[25];
  for (int m = 0; m < 25; ++m) rows[m] = (m / 5) * W + m % 5;
  float w0[25], w1[25], out[32];
  for (int m = 0; m < 25; ++m) w0[m] = 0.01f * m, w1[m] = 0.02f * m;
  float* v = (float*)aligned_alloc(64, (6 * W + 8) * C * 4);
  for (long i = 0; i < (6 * W + 8) * C; ++i) v[i] = 1e-3f * (i % 7);

  const long reps = 2000000;
  atn_loop(v, rows, w0, w1, out, 1000, C);
  double t = best_of(5, [&] { atn_loop(v, rows, w0, w1, out, reps, C); }) / (reps * 25.0);
  printf("atn, rows in L1/L2:     %5.2f ns a step (8 FMAs); %5.1f GFLOP/s\n", t * 1e9, 16.0 * 8 / t / 1e9);

  for (long npar : {64L, 1000L, 65536L}) {  // query rows: 128 KB (L2), 2 MB (L3), 128 MB (DRAM)
    float* q = (float*)aligned_alloc(64, (2 * npar + 2) * C * 4);
    for (long i = 0; i < (2 * npar + 2) * C; ++i) q[i] = 1e-3f * (i % 5);
    float* k = (float*)aligned_alloc(64, (6 * W + npar + 8) * C * 4);
    for (long i = 0; i < (6 * W + npar + 8) * C; ++i) k[i] = 1e-3f * (i % 3);
    const long sreps = 400000;
    sim_loop(q, k, rows, out, 1000, npar);
    t = best_of(5, [&] { sim_loop(q, k, rows, out, sreps, npar); }) / sreps;  // per child pair
    printf("sim, queries %6.1f MB: %5.0f ns a child pair (25 slots); %5.1f GFLOP/s\n", 2.0 * npar * C * 4 / 1e6,
           t * 1e9, 2.0 * 2 * 25 * C / t / 1e9);
    free(q), free(k);
  }
  free(v);
  return 0;
}
