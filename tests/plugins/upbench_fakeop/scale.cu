// A stand-in kernel source for the provenance tests: declared by the fake-scale `kernel` impl, never compiled.
extern "C" __global__ void fake_scale(const float* x, const float* scale, float* y, int n, int c, int hw) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i] * scale[(i / hw) % c];
}
