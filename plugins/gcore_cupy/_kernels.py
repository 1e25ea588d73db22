"""CUDA sources of the fused GC-SGD / GC-Adam element updates.

The per-element arithmetic lives in :data:`HEADER` as plain C++ templates marked
``GC_HD`` (``__device__`` under CUDA, nothing on the host), so the very same code is
compiled by CuPy for the GPU and by a host C++ compiler in the tests, where it is checked
against gcore's rules without a GPU.

Each update reads the gradient, the parameter and the optimizer state once and writes
them once; the per-unit means of the (L2-decayed) gradient come from one reduction pass
before it. ``mean`` is 0 where GC does not apply.
"""

from __future__ import annotations

HEADER = r"""
#ifndef GC_HD
#define GC_HD __device__
#endif
#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include <cmath>
using std::sqrt;
#endif

// d = GC(±g + l2·p); then torch.optim.SGD's momentum / Nesterov; p -= lr·d.
template <typename T>
GC_HD inline void gc_sgd(T g, T mean, T& p, T& buf, bool momentum_on, bool first,
                         bool nesterov, T sgn, T l2, T lr, T momentum, T dampening_scale) {
    T d = sgn * g + l2 * p;
    d = d - mean;
    if (momentum_on) {
        T b = first ? d : momentum * buf + dampening_scale * d;
        buf = b;
        d = nesterov ? d + momentum * b : b;
    }
    p = p - lr * d;
}

// d = GC(±g + l2·p); torch.optim.Adam's moments (AMSGrad optional); AdamW's decay as
// p·(1 - lr·wd) (decay = 1 for Adam).
template <typename T>
GC_HD inline void gc_adam(T g, T mean, T& p, T& m, T& v, T& vmax, bool amsgrad, T sgn,
                          T l2, T one_minus_beta1, T beta2, T one_minus_beta2,
                          T step_size, T bc2_sqrt, T eps, T decay) {
    T d = sgn * g + l2 * p;
    d = d - mean;
    m = m + one_minus_beta1 * (d - m);
    v = beta2 * v + one_minus_beta2 * (d * d);
    T second = v;
    if (amsgrad) {
        vmax = vmax > v ? vmax : v;
        second = vmax;
    }
    T u = -step_size * m / (sqrt(second) / bc2_sqrt + eps);
    p = p * decay + u;
}
"""

SGD_PARAMS_IN = (
    "T g, T mean, bool momentum_on, bool first, bool nesterov, T sgn, T l2, T lr, "
    "T momentum, T dampening_scale"
)
SGD_BODY = (
    "gc_sgd<T>(g, mean, p, buf, momentum_on, first, nesterov, sgn, l2, lr, momentum, "
    "dampening_scale);"
)
ADAM_PARAMS_IN = (
    "T g, T mean, bool amsgrad, T sgn, T l2, T one_minus_beta1, T beta2, "
    "T one_minus_beta2, T step_size, T bc2_sqrt, T eps, T decay"
)
ADAM_BODY = (
    "gc_adam<T>(g, mean, p, m, v, vmax, amsgrad, sgn, l2, one_minus_beta1, beta2, "
    "one_minus_beta2, step_size, bc2_sqrt, eps, decay);"
)
