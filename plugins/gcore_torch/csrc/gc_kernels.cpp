// Row-blocked GC-Adam/AdamW and GC-SGD for CPU tensors (float32, float64).
//
// Each output unit is one contiguous row of a (units, fan_in) weight. The kernel reads a
// row once to take its mean (L2 decay included, sign flipped when maximizing), then
// updates the row while it is still in cache, so the centralized gradient never goes to
// main memory: the memory traffic is that of torch's fused optimizers. The per-element
// arithmetic is gcore/csrc/gc_update.h, shared with the CuPy kernels.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

#include "gc_update.h"

namespace {

int64_t grain(int64_t row) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row, 1)); }

template <typename T>
T row_mean(const T* __restrict__ p, const T* __restrict__ g, int64_t k, T s, T l2) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < k; ++j) acc += static_cast<double>(gc_effective_grad<T>(g[j], p[j], s, l2));
  return static_cast<T>(acc / static_cast<double>(k));
}

// Every option that changes the loop body is a template parameter (for the vectorizer).
template <typename T, bool AMSGRAD>
void adam_row(T* __restrict__ pr, const T* __restrict__ gr, T* __restrict__ mr,
              T* __restrict__ vr, T* __restrict__ vm, int64_t k, bool center, T s, T l2, T w1,
              T b2, T w2, T bc2_sqrt, T e, T step_size, T decay, T wd_update) {
  const T mean = center ? row_mean<T>(pr, gr, k, s, l2) : T(0);
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) {
    const T x = gc_effective_grad<T>(gr[j], pr[j], s, l2) - mean;
    T dummy = T(0);
    T& vmax = AMSGRAD ? vm[j] : dummy;
    const T d = gc_adam_direction<T>(x, mr[j], vr[j], vmax, AMSGRAD, w1, b2, w2, bc2_sqrt, e);
    pr[j] = gc_adam_param<T>(pr[j], d, step_size, decay, wd_update);
  }
}

template <typename T, int MODE, bool NESTEROV>
void sgd_row(T* __restrict__ pr, const T* __restrict__ gr, T* __restrict__ br, int64_t k,
             bool center, T s, T l2, T mu, T keep, T lr) {
  const T mean = center ? row_mean<T>(pr, gr, k, s, l2) : T(0);
  T dummy = T(0);
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) {
    const T x = gc_effective_grad<T>(gr[j], pr[j], s, l2) - mean;
    T& b = MODE == GC_SGD_PLAIN ? dummy : br[j];
    pr[j] -= lr * gc_sgd_direction<T>(x, b, MODE, mu, keep, NESTEROV);
  }
}

template <typename T, int MODE, bool NESTEROV>
void sgd_rows(T* p, const T* g, T* buf, int64_t n, int64_t k, bool center, T s, T l2, T mu,
              T keep, T lr) {
  at::parallel_for(0, n, grain(k), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t o = r * k;
      sgd_row<T, MODE, NESTEROV>(p + o, g + o, buf == nullptr ? nullptr : buf + o, k, center,
                                 s, l2, mu, keep, lr);
    }
  });
}

void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dtype() == like.dtype() &&
                  t.sizes() == like.sizes(),
              name, ": expected a contiguous CPU tensor of the parameter's shape and dtype");
}

// Rows of a tensor: its output axis 0 (a 1-d tensor is one row).
int64_t rows(const at::Tensor& p) { return p.dim() >= 1 && p.numel() ? p.size(0) : 1; }

}  // namespace

void gc_adam_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
              std::vector<at::Tensor> exp_avgs, std::vector<at::Tensor> exp_avg_sqs,
              std::vector<at::Tensor> max_exp_avg_sqs, std::vector<double> steps,
              std::vector<bool> center, double lr, double beta1, double beta2, double eps,
              double l2, double wd, bool decoupled, bool paper, bool maximize, bool amsgrad) {
  for (size_t i = 0; i < params.size(); ++i) {
    auto& p = params[i];
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous(), "param: expected a contiguous CPU tensor");
    check(grads[i], p, "grad");
    check(exp_avgs[i], p, "exp_avg");
    check(exp_avg_sqs[i], p, "exp_avg_sq");
    if (amsgrad) check(max_exp_avg_sqs[i], p, "max_exp_avg_sq");
    if (p.numel() == 0) continue;
    const int64_t n = rows(p), k = p.numel() / n;
    double step_size, bc2_sqrt, decay, wd_update;
    gc_adam_coefficients(lr, beta1, beta2, steps[i], wd, decoupled, paper, &step_size,
                         &bc2_sqrt, &decay, &wd_update);
    const bool c = center[i];
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gc_adam_", [&] {
      using T = scalar_t;
      T* pp = p.data_ptr<T>();
      const T* gp = grads[i].data_ptr<T>();
      T* mp = exp_avgs[i].data_ptr<T>();
      T* vp = exp_avg_sqs[i].data_ptr<T>();
      T* vmp = amsgrad ? max_exp_avg_sqs[i].data_ptr<T>() : nullptr;
      const T s = maximize ? T(-1) : T(1), l2t = static_cast<T>(l2),
              w1 = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2),
              w2 = static_cast<T>(1.0 - beta2), bc2 = static_cast<T>(bc2_sqrt),
              e = static_cast<T>(eps), ss = static_cast<T>(step_size),
              dc = static_cast<T>(decay), wu = static_cast<T>(wd_update);
      at::parallel_for(0, n, grain(k), [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t o = r * k;
          if (amsgrad) {
            adam_row<T, true>(pp + o, gp + o, mp + o, vp + o, vmp + o, k, c, s, l2t, w1, b2,
                              w2, bc2, e, ss, dc, wu);
          } else {
            adam_row<T, false>(pp + o, gp + o, mp + o, vp + o, nullptr, k, c, s, l2t, w1, b2,
                               w2, bc2, e, ss, dc, wu);
          }
        }
      });
    });
  }
}

void gc_sgd_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
             std::vector<at::Tensor> bufs, std::vector<bool> first, std::vector<bool> center,
             double lr, double momentum, double dampening, bool nesterov, double l2,
             bool maximize) {
  for (size_t i = 0; i < params.size(); ++i) {
    auto& p = params[i];
    TORCH_CHECK(p.device().is_cpu() && p.is_contiguous(), "param: expected a contiguous CPU tensor");
    check(grads[i], p, "grad");
    const bool has_buf = momentum != 0.0;
    if (has_buf) check(bufs[i], p, "momentum_buffer");
    if (p.numel() == 0) continue;
    const int64_t n = rows(p), k = p.numel() / n;
    const int mode = !has_buf ? GC_SGD_PLAIN : (first[i] ? GC_SGD_FIRST : GC_SGD_MOMENTUM);
    const bool c = center[i];
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gc_sgd_", [&] {
      using T = scalar_t;
      T* pp = p.data_ptr<T>();
      const T* gp = grads[i].data_ptr<T>();
      T* bp = has_buf ? bufs[i].data_ptr<T>() : nullptr;
      const T s = maximize ? T(-1) : T(1), l2t = static_cast<T>(l2),
              mu = static_cast<T>(momentum), keep = static_cast<T>(1.0 - dampening),
              lrt = static_cast<T>(lr);
      if (mode == GC_SGD_PLAIN) {
        sgd_rows<T, GC_SGD_PLAIN, false>(pp, gp, bp, n, k, c, s, l2t, mu, keep, lrt);
      } else if (mode == GC_SGD_FIRST) {
        if (nesterov) sgd_rows<T, GC_SGD_FIRST, true>(pp, gp, bp, n, k, c, s, l2t, mu, keep, lrt);
        else sgd_rows<T, GC_SGD_FIRST, false>(pp, gp, bp, n, k, c, s, l2t, mu, keep, lrt);
      } else {
        if (nesterov) sgd_rows<T, GC_SGD_MOMENTUM, true>(pp, gp, bp, n, k, c, s, l2t, mu, keep, lrt);
        else sgd_rows<T, GC_SGD_MOMENTUM, false>(pp, gp, bp, n, k, c, s, l2t, mu, keep, lrt);
      }
    });
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gc_adam_", &gc_adam_, "Row-blocked GC-Adam/AdamW step (in place)");
  m.def("gc_sgd_", &gc_sgd_, "Row-blocked GC-SGD step (in place)");
}
