// Row-blocked GC-Adam / GC-SGD for CPU tensors (float32, float64).
//
// Each output unit is one contiguous row of a (units, fan_in) weight. The kernel reads a
// row once to take its mean (L2 decay included, sign flipped when maximizing), then
// updates the row while it is still in cache, so the centralized gradient never goes to
// main memory: the memory traffic is that of torch's fused optimizers.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

namespace {

int64_t grain(int64_t row) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row, 1)); }

// The inner loops are written for the auto-vectorizer: restrict pointers, and every
// option that changes the loop body is a template parameter.
template <typename T, bool AMSGRAD>
void adam_row(T* __restrict__ pr, const T* __restrict__ gr, T* __restrict__ mr,
              T* __restrict__ vr, T* __restrict__ vm, int64_t k, T s, T l2, T w1, T b2, T w2,
              T inv_bc2_sqrt, T e, T decay, T step_size) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < k; ++j) acc += static_cast<double>(s * gr[j] + l2 * pr[j]);
  const T mean = static_cast<T>(acc / static_cast<double>(k));
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) {
    const T x = s * gr[j] + l2 * pr[j] - mean;
    const T mj = mr[j] + w1 * (x - mr[j]);
    const T vj = b2 * vr[j] + w2 * x * x;
    mr[j] = mj;
    vr[j] = vj;
    T second = vj;
    if constexpr (AMSGRAD) {
      second = vm[j] > vj ? vm[j] : vj;
      vm[j] = second;
    }
    const T denom = std::sqrt(second) * inv_bc2_sqrt + e;
    pr[j] = pr[j] * decay - step_size * mj / denom;
  }
}

template <typename T>
void adam_rows(T* p, const T* g, T* m, T* v, T* vmax, int64_t n, int64_t k, double lr,
               double beta1, double beta2, double eps, double l2, double wd, bool maximize,
               bool amsgrad, double step) {
  const T step_size = static_cast<T>(lr / (1.0 - std::pow(beta1, step)));
  const T inv_bc2_sqrt = static_cast<T>(1.0 / std::sqrt(1.0 - std::pow(beta2, step)));
  const T w1 = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2),
          w2 = static_cast<T>(1.0 - beta2), e = static_cast<T>(eps),
          decay = static_cast<T>(1.0 - lr * wd), s = static_cast<T>(maximize ? -1.0 : 1.0),
          l2t = static_cast<T>(l2);
  at::parallel_for(0, n, grain(k), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t o = r * k;
      if (amsgrad) {
        adam_row<T, true>(p + o, g + o, m + o, v + o, vmax + o, k, s, l2t, w1, b2, w2,
                          inv_bc2_sqrt, e, decay, step_size);
      } else {
        adam_row<T, false>(p + o, g + o, m + o, v + o, nullptr, k, s, l2t, w1, b2, w2,
                           inv_bc2_sqrt, e, decay, step_size);
      }
    }
  });
}

template <typename T, int MODE>  // 0: no momentum, 1: first step, 2: momentum
void sgd_row(T* __restrict__ pr, const T* __restrict__ gr, T* __restrict__ br, int64_t k,
             T s, T l2, T mu, T keep, T lr, bool nesterov) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < k; ++j) acc += static_cast<double>(s * gr[j] + l2 * pr[j]);
  const T mean = static_cast<T>(acc / static_cast<double>(k));
  const T nest = nesterov ? T(1) : T(0);
#pragma omp simd
  for (int64_t j = 0; j < k; ++j) {
    const T x = s * gr[j] + l2 * pr[j] - mean;
    if constexpr (MODE == 0) {
      pr[j] -= lr * x;
    } else {
      const T b = MODE == 1 ? x : mu * br[j] + keep * x;
      br[j] = b;
      // Nesterov: x + mu*b; else b. Written without a branch for the vectorizer.
      pr[j] -= lr * (nest * x + (nest * mu + (T(1) - nest)) * b);
    }
  }
}

template <typename T>
void sgd_rows(T* p, const T* g, T* buf, int64_t n, int64_t k, double lr, double momentum,
              double dampening, bool nesterov, double l2, bool maximize, bool first) {
  const T s = static_cast<T>(maximize ? -1.0 : 1.0), l2t = static_cast<T>(l2),
          mu = static_cast<T>(momentum), keep = static_cast<T>(1.0 - dampening),
          lrt = static_cast<T>(lr);
  at::parallel_for(0, n, grain(k), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t o = r * k;
      if (buf == nullptr) {
        sgd_row<T, 0>(p + o, g + o, nullptr, k, s, l2t, mu, keep, lrt, nesterov);
      } else if (first) {
        sgd_row<T, 1>(p + o, g + o, buf + o, k, s, l2t, mu, keep, lrt, nesterov);
      } else {
        sgd_row<T, 2>(p + o, g + o, buf + o, k, s, l2t, mu, keep, lrt, nesterov);
      }
    }
  });
}

void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dtype() == like.dtype() &&
                  t.numel() == like.numel(),
              name, ": expected a contiguous CPU tensor like the parameter");
}

}  // namespace

void gc_adam_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
              std::vector<at::Tensor> exp_avgs, std::vector<at::Tensor> exp_avg_sqs,
              std::vector<at::Tensor> max_exp_avg_sqs, std::vector<double> steps, double lr,
              double beta1, double beta2, double eps, double l2, double wd, bool maximize,
              bool amsgrad) {
  for (size_t i = 0; i < params.size(); ++i) {
    auto& p = params[i];
    check(grads[i], p, "grad");
    check(exp_avgs[i], p, "exp_avg");
    check(exp_avg_sqs[i], p, "exp_avg_sq");
    if (amsgrad) check(max_exp_avg_sqs[i], p, "max_exp_avg_sq");
    TORCH_CHECK(p.is_contiguous() && p.dim() >= 1, "param: expected a contiguous tensor");
    const int64_t n = p.size(0), k = n ? p.numel() / n : 0;
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gc_adam_", [&] {
      adam_rows<scalar_t>(p.data_ptr<scalar_t>(), grads[i].data_ptr<scalar_t>(),
                          exp_avgs[i].data_ptr<scalar_t>(), exp_avg_sqs[i].data_ptr<scalar_t>(),
                          amsgrad ? max_exp_avg_sqs[i].data_ptr<scalar_t>() : nullptr, n, k, lr,
                          beta1, beta2, eps, l2, wd, maximize, amsgrad, steps[i]);
    });
  }
}

void gc_sgd_(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
             std::vector<at::Tensor> bufs, double lr, double momentum, double dampening,
             bool nesterov, double l2, bool maximize, bool first) {
  for (size_t i = 0; i < params.size(); ++i) {
    auto& p = params[i];
    check(grads[i], p, "grad");
    if (!bufs.empty()) check(bufs[i], p, "momentum_buffer");
    TORCH_CHECK(p.is_contiguous() && p.dim() >= 1, "param: expected a contiguous tensor");
    const int64_t n = p.size(0), k = n ? p.numel() / n : 0;
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gc_sgd_", [&] {
      sgd_rows<scalar_t>(p.data_ptr<scalar_t>(), grads[i].data_ptr<scalar_t>(),
                         bufs.empty() ? nullptr : bufs[i].data_ptr<scalar_t>(), n, k, lr,
                         momentum, dampening, nesterov, l2, maximize, first);
    });
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gc_adam_", &gc_adam_, "Row-blocked GC-Adam/AdamW step (in place)");
  m.def("gc_sgd_", &gc_sgd_, "Row-blocked GC-SGD step (in place)");
}
