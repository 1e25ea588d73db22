// gc_update.h — the per-element arithmetic of GC-SGD, GC-Adam and GC-AdamW.
//
// One definition shared by every compiled fast path: the PyTorch CPU kernels
// (plugins/gcore_torch/csrc/gc_kernels.cpp) include it as host C++, the CuPy kernels load it
// as their preamble (CUDA device code, NVRTC). It mirrors gcore.rules (gcore.SGD / Adam /
// AdamW) and is tested step by step against them.
//
// Contract. A kernel first forms the effective gradient of a row (one output unit)
//     g_eff = gc_effective_grad(g, p, sign, l2)           (sign = -1 when maximizing)
// takes the row's mean of g_eff (the caller's reduction: a loop on the CPU, a reduction
// kernel on the GPU), and then, for every element of the row, with x = g_eff - mean
// (x = g_eff for a tensor without GC):
//     SGD:   d = gc_sgd_direction(x, buf, mode, momentum, keep, nesterov);  p = p - lr * d
//     Adam:  d = gc_adam_direction(x, m, v, vmax, amsgrad, one_minus_beta1, beta2,
//                                  one_minus_beta2, bc2_sqrt, eps);
//            p = gc_adam_param(p, d, step_size, decay, wd_update)
// with the per-step scalars from gc_adam_coefficients (in double, once per tensor).
// Centralizing the *update* (gc_where="update") needs the mean of d, which is not a
// per-element quantity: callers route it elsewhere (the core rule).
//
// Everything is plain scalar math on float/double (float16/bfloat16 callers load into
// float and store back), with no std:: containers, so the same text compiles with a host
// C++ compiler and with nvcc/NVRTC.
#ifndef GCORE_GC_UPDATE_H_
#define GCORE_GC_UPDATE_H_

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define GC_FN __device__ __forceinline__
#define GC_HOST_DEVICE_FN __host__ __device__ __forceinline__
#else
#include <math.h>
#define GC_FN inline
#define GC_HOST_DEVICE_FN inline
#endif

// sqrt with one spelling for float and double on host and device.
GC_FN float gc_sqrt(float x) { return sqrtf(x); }
GC_FN double gc_sqrt(double x) { return sqrt(x); }

// The gradient GC sees: sign * grad + l2 * param (L2 decay enters before GC, as in the
// paper and torch.optim.SGD/Adam; pass l2 = 0 for AdamW's decoupled decay).
template <typename T>
GC_FN T gc_effective_grad(T g, T p, T sign, T l2) {
  return sign * g + l2 * p;
}

// ---- SGD ---------------------------------------------------------------------------------
// Momentum modes.
#define GC_SGD_PLAIN 0  // no momentum: d = x, no buffer
#define GC_SGD_FIRST 1  // first step: buf = x (torch starts the buffer undamped)
#define GC_SGD_MOMENTUM 2  // buf = momentum * buf + keep * x, keep = 1 - dampening

// Updates the momentum buffer in place and returns the descent direction d
// (Nesterov: x + momentum * buf; else buf); the caller applies p = p - lr * d.
template <typename T>
GC_FN T gc_sgd_direction(T x, T& buf, int mode, T momentum, T keep, int nesterov) {
  if (mode == GC_SGD_PLAIN) return x;
  const T b = mode == GC_SGD_FIRST ? x : momentum * buf + keep * x;
  buf = b;
  return nesterov ? x + momentum * b : b;
}

// ---- Adam / AdamW --------------------------------------------------------------------------
// Updates the moments in place (m: torch's lerp form, v, and vmax with AMSGrad) and returns
// m / (sqrt(v or vmax) / bc2_sqrt + eps). With convention "paper" pass bc2_sqrt = 1
// (the GC authors' AdamW keeps v uncorrected and folds sqrt(bc2) into the step size).
template <typename T>
GC_FN T gc_adam_direction(T x, T& m, T& v, T& vmax, int amsgrad, T one_minus_beta1, T beta2,
                          T one_minus_beta2, T bc2_sqrt, T eps) {
  const T mj = m + one_minus_beta1 * (x - m);
  const T vj = beta2 * v + one_minus_beta2 * (x * x);
  m = mj;
  v = vj;
  T second = vj;
  if (amsgrad) {
    second = vmax > vj ? vmax : vj;
    vmax = second;
  }
  return mj / (gc_sqrt(second) / bc2_sqrt + eps);
}

// The new parameter: decay * p - step_size * (d + wd_update * p).
//   Adam (L2 in the gradient):        decay = 1,            wd_update = 0
//   AdamW, convention "torch":         decay = 1 - lr * wd,  wd_update = 0
//   AdamW, convention "paper":         decay = 1,            wd_update = wd
template <typename T>
GC_FN T gc_adam_param(T p, T d, T step_size, T decay, T wd_update) {
  return decay * p - step_size * (d + wd_update * p);
}

// 1 - beta**t, accurate for small t (as gcore.rules computes it).
GC_HOST_DEVICE_FN double gc_one_minus_pow(double beta, double t) {
  if (beta == 0.0) return 1.0;
  return -expm1(t * log(beta));
}

// Per-tensor scalars of one Adam step at step count t (>= 1, after the increment).
// decoupled: AdamW; paper: the GC authors' AdamW convention (only with decoupled).
GC_HOST_DEVICE_FN void gc_adam_coefficients(double lr, double beta1, double beta2, double t,
                                            double wd, int decoupled, int paper,
                                            double* step_size, double* bc2_sqrt,
                                            double* decay, double* wd_update) {
  const double bc1 = gc_one_minus_pow(beta1, t);
  const double bc2s = sqrt(gc_one_minus_pow(beta2, t));
  *decay = 1.0;
  *wd_update = 0.0;
  if (decoupled && paper) {
    *step_size = lr * bc2s / bc1;
    *bc2_sqrt = 1.0;
    *wd_update = wd;
  } else {
    *step_size = lr / bc1;
    *bc2_sqrt = bc2s;
    if (decoupled) *decay = 1.0 - lr * wd;
  }
}

#endif  // GCORE_GC_UPDATE_H_
