// Row-blocked GC-Adam/AdamW and GC-SGD for CPU tensors (float32, float64).
//
// Where each output unit is one contiguous row of a (units, fan_in) weight, the kernel sums
// a row's gradient for its mean (L2 decay included, sign flipped when maximizing) while it
// updates the row before, then updates the row with the gradient still in cache, so the
// centralized gradient never goes to main memory: the memory traffic is that of torch's
// fused optimizers. Units that are not rows (transformers' Conv1D (in, out), ConvTranspose
// (in, out, k...)) take a pass for their means, then the update (all_units). The
// per-element arithmetic is gcore/csrc/gc_update.h, shared with the CuPy kernels.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__AVX__) || defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__AVX__)
constexpr bool kStreamingStores = true;
#else
constexpr bool kStreamingStores = false;  // sub_streaming would be a plain loop
#endif

#include "gc_update.h"

namespace {

int64_t grain(int64_t row) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(row, 1)); }

constexpr int64_t W = 16;   // partial sums of a row's mean
constexpr int64_t C = 256;  // elements per chunk

// Sum of the effective gradient g + l2s * p over [j0, j1) (l2s = 0: p is not read): W
// partial sums in T within the chunk (at most C / W terms each), returned in double, so
// a row's mean accumulates in double across chunks. Independent partial sums keep the
// adds from waiting on each other's latency.
template <typename T>
inline double chunk_sum(const T* g, const T* p, int64_t j0, int64_t j1, T l2s) {
  T part[W] = {T(0)};
  int64_t j = j0;
  if (l2s == T(0)) {
    for (; j + W <= j1; j += W)
      for (int64_t u = 0; u < W; ++u) part[u] += g[j + u];
  } else {
    for (; j + W <= j1; j += W)
      for (int64_t u = 0; u < W; ++u) part[u] += gc_effective_grad<T>(g[j + u], p[j + u], T(1), l2s);
  }
  double acc = 0.0;
  for (; j < j1; ++j) acc += static_cast<double>(gc_effective_grad<T>(g[j], p[j], T(1), l2s));
  for (int64_t u = 0; u < W; ++u) acc += static_cast<double>(part[u]);
  return acc;
}

// s * g + l2 * p = s * (g + s * l2 * p), s = ±1.
template <typename T>
T row_mean(const T* g, const T* p, int64_t k, T s, T l2) {
  double acc = 0.0;
  for (int64_t j0 = 0; j0 < k; j0 += C) acc += chunk_sum<T>(g, p, j0, std::min(j0 + C, k), l2 * s);
  return static_cast<T>(static_cast<double>(s) * acc / static_cast<double>(k));
}

// Rows [r0, r1) of a (rows, k) tensor: each row's elements updated by op with the row's
// mean (0 without GC). The mean of row r + 1 is summed chunk by chunk while row r is
// updated, so the gradient streams from memory alongside the parameter and state, as in
// torch's fused kernels, instead of in a pass of its own; the update then finds the row's
// gradient in cache. The summation order is that of row_mean.
template <typename T, typename Op>
void gc_rows(Op& op, const T* g, const T* p, int64_t r0, int64_t r1, int64_t k, bool center,
             T s, T l2) {
  if (r0 >= r1) return;
  T mean = center ? row_mean<T>(g + r0 * k, p + r0 * k, k, s, l2) : T(0);
  const T l2s = l2 * s;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * k;
    const bool ahead = center && r + 1 < r1;
    double acc = 0.0;
    for (int64_t j0 = 0; j0 < k; j0 += C) {
      const int64_t j1 = std::min(j0 + C, k);
      if (ahead) acc += chunk_sum<T>(g + o + k, p + o + k, j0, j1, l2s);
      op.update(o + j0, o + j1, mean);
    }
    if (ahead) mean = static_cast<T>(static_cast<double>(s) * acc / static_cast<double>(k));
  }
}

// Every option that changes the loop body is a template parameter (for the vectorizer).
template <typename T, bool AMSGRAD>
struct AdamOp {
  T* p;
  const T* g;
  T* m;
  T* v;
  T* vm;
  T s, l2, w1, b2, w2, bc2_sqrt, e, step_size, decay, wd_update;

  inline void element(int64_t j, T mean) {
    const T x = gc_effective_grad<T>(g[j], p[j], s, l2) - mean;
    T dummy = T(0);
    T& vmax = AMSGRAD ? vm[j] : dummy;
    const T d = gc_adam_direction<T>(x, m[j], v[j], vmax, AMSGRAD, w1, b2, w2, bc2_sqrt, e);
    p[j] = gc_adam_param<T>(p[j], d, step_size, decay, wd_update);
  }
  inline void update(int64_t j0, int64_t j1, T mean) {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) element(j, mean);
  }
  // Each element with its own unit's mean (means[j - j0]).
  inline void update_means(int64_t j0, int64_t j1, const T* means) {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) element(j, means[j - j0]);
  }
  inline void finish() {}
};

template <typename T, int MODE, bool NESTEROV>
struct SgdOp {
  T* p;
  const T* g;
  T* b;
  T s, l2, mu, keep, lr;

  inline void element(int64_t j, T mean) {
    const T x = gc_effective_grad<T>(g[j], p[j], s, l2) - mean;
    T dummy = T(0);
    T& buf = MODE == GC_SGD_PLAIN ? dummy : b[j];
    p[j] -= lr * gc_sgd_direction<T>(x, buf, MODE, mu, keep, NESTEROV);
  }
  inline void update(int64_t j0, int64_t j1, T mean) {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) element(j, mean);
  }
  // Each element with its own unit's mean (means[j - j0]).
  inline void update_means(int64_t j0, int64_t j1, const T* means) {
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) element(j, means[j - j0]);
  }
  inline void finish() {}
};

// out[j] = g[j] - mean over [j0, j1) with non-temporal (streaming) stores where the CPU
// has them: when the outputs are larger than the cache, torch's kernels read them back from
// memory anyway, and a streaming store saves reading each line of out before writing it.
// Same arithmetic as the plain loop (one subtraction an element), so the same bits.
template <typename T>
inline void sub_streaming(T* out, const T* g, int64_t j0, int64_t j1, T mean) {
  int64_t j = j0;
#if defined(__AVX__)
  for (; j < j1 && (reinterpret_cast<std::uintptr_t>(out + j) & 31) != 0; ++j) out[j] = g[j] - mean;
  if constexpr (std::is_same<T, float>::value) {
    const __m256 m = _mm256_set1_ps(mean);
    for (; j + 8 <= j1; j += 8) _mm256_stream_ps(out + j, _mm256_sub_ps(_mm256_loadu_ps(g + j), m));
  } else {
    static_assert(std::is_same<T, double>::value, "gc_center_ dispatches float and double");
    const __m256d m = _mm256_set1_pd(mean);
    for (; j + 4 <= j1; j += 4) _mm256_stream_pd(out + j, _mm256_sub_pd(_mm256_loadu_pd(g + j), m));
  }
#endif
  for (; j < j1; ++j) out[j] = g[j] - mean;
}

template <typename T, bool L2, bool STREAM>
struct CenterOp {
  T* out;
  const T* g;
  const T* p;
  T l2;

  inline void element(int64_t j, T mean) {
    out[j] = (L2 ? gc_effective_grad<T>(g[j], p[j], T(1), l2) : g[j]) - mean;
  }
  inline void update(int64_t j0, int64_t j1, T mean) {
    if constexpr (STREAM && !L2) {
      sub_streaming<T>(out, g, j0, j1, mean);
    } else {
#pragma omp simd
      for (int64_t j = j0; j < j1; ++j) element(j, mean);
    }
  }
  // Streaming stores are weakly ordered: fence them before the thread's work counts as done.
  inline void finish() {
#if defined(__AVX__)
    if constexpr (STREAM) _mm_sfence();
#endif
  }
};

// Runs op over all rows of an (n, k) tensor, rows split between threads.
template <typename T, typename Op>
void all_rows(Op op, const T* g, const T* p, int64_t n, int64_t k, bool center, T s, T l2) {
  at::parallel_for(0, n, grain(k), [&](int64_t r0, int64_t r1) {
    Op local = op;
    gc_rows<T>(local, g, p, r0, r1, k, center, s, l2);
    local.finish();
  });
}

// Whether t is a dense CPU tensor laid out like the parameter p (same dtype and shape).
// Python tensor subclasses (DTensor and other wrappers, whose data is elsewhere) never suit.
bool plain(const at::Tensor& t) {
  return t.layout() == at::kStrided && t.has_storage() &&
         !t.key_set().has(c10::DispatchKey::Python) && t.device().is_cpu();
}

bool like_param(const c10::optional<at::Tensor>& t, const at::Tensor& p) {
  return t.has_value() && plain(*t) &&
         t->scalar_type() == p.scalar_type() && t->sizes() == p.sizes() && t->is_contiguous();
}

bool kernel_param(const at::Tensor& p) {
  return plain(p) && p.is_contiguous() &&
         (p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble);
}

// A step count: a one-element float tensor on the CPU (torch.optim's fused layout).
bool step_tensor(const c10::optional<at::Tensor>& o) {
  if (!o.has_value()) return false;
  const at::Tensor& t = *o;
  return t.layout() == at::kStrided && t.device().is_cpu() && t.numel() == 1 &&
         (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

double bump(at::Tensor& t) {
  if (t.scalar_type() == at::kFloat) return static_cast<double>(*t.data_ptr<float>() += 1.0f);
  return *t.data_ptr<double>() += 1.0;
}

// Rows of a tensor: its output axis 0 (a 1-d tensor is one row).
int64_t rows(const at::Tensor& p) { return p.dim() >= 1 && p.numel() ? p.size(0) : 1; }

// all_units cuts a group into at most this many bands of rows (of at least kBandRows rows)
// and each row into at most kMaxParts pieces (of at least kPartElems elements): the tasks
// its threads share. The cut depends on the shape alone, so the sums and the results do not
// depend on the thread count.
constexpr int64_t kMaxBands = 16;
constexpr int64_t kBandRows = 64;
constexpr int64_t kMaxParts = 8;
constexpr int64_t kPartElems = 8192;

// A contiguous tensor viewed as (G, A, U, B) whose output units are the (g, u) pairs: a
// unit's elements are its group's A runs of B at stride U * B (transformers' Conv1D
// (in, out): A = in, U = out, B = 1; ConvTranspose (in, out, k...): B = the kernel's size;
// grouped ConvTranspose: G groups). A unit spans every row a, so its mean needs a pass of
// its own: the first pass sums each column of a group's (A, U * B) rows in double, by
// bands of rows (contiguous reads; the bands' sums are added in order), and the second
// updates the rows, each element with its unit's mean: one more read of the gradient than
// torch's fused kernels make. Measured slower on GPT-2's Conv1D weights (1 thread): blocks
// of whole units kept in cache between the passes (2-4x torch's fused Adam: a block's rows
// are short strided runs, which the prefetchers do not follow), and a second pass walking
// the rows backwards to start on those still in cache (1.4-1.6x against 1.4x).
template <typename T, typename Op>
void all_units(Op op, const T* g, const T* p, int64_t G, int64_t A, int64_t U, int64_t B,
               T s, T l2) {
  const int64_t run = U * B;
  const int64_t bands = std::max<int64_t>(1, std::min<int64_t>(kMaxBands, A / kBandRows));
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(kMaxParts, run / kPartElems));
  const int64_t piece = (run + parts - 1) / parts;
  const int64_t tasks = bands * parts;
  const T l2s = l2 * s;
  const double count = static_cast<double>(A) * static_cast<double>(B);
  std::vector<double> acc(bands * run);
  std::vector<T> means(run);
  auto task = [&](int64_t t, int64_t* a0, int64_t* a1, int64_t* j0, int64_t* j1) {
    const int64_t band = t / parts;
    *a0 = band * A / bands;
    *a1 = (band + 1) * A / bands;
    *j0 = (t % parts) * piece;
    *j1 = std::min(run, *j0 + piece);
    return band;
  };
  for (int64_t gi = 0; gi < G; ++gi) {
    const T* gg = g + gi * A * run;
    const T* pg = p + gi * A * run;
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        int64_t a0, a1, j0, j1;
        const int64_t band = task(t, &a0, &a1, &j0, &j1);
        double* sum = acc.data() + band * run;
        std::fill(sum + j0, sum + j1, 0.0);
        // Four rows at a time, added in pairs in T ((r0 + r1) + (r2 + r3): exact for
        // equal elements) before the double sum: a quarter of the sum's loads, stores
        // and conversions.
        int64_t a = a0;
        for (; a + 4 <= a1; a += 4) {
          const T* g0 = gg + a * run;
          const T *g1 = g0 + run, *g2 = g1 + run, *g3 = g2 + run;
          if (l2s == T(0)) {
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j)
              sum[j] += static_cast<double>((g0[j] + g1[j]) + (g2[j] + g3[j]));
          } else {
            const T* p0 = pg + a * run;
            const T *p1 = p0 + run, *p2 = p1 + run, *p3 = p2 + run;
            auto e = [&](const T* gr, const T* pr, int64_t j) {
              return gc_effective_grad<T>(gr[j], pr[j], T(1), l2s);
            };
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j)
              sum[j] += static_cast<double>((e(g0, p0, j) + e(g1, p1, j)) +
                                            (e(g2, p2, j) + e(g3, p3, j)));
          }
        }
        for (; a < a1; ++a) {
          const T* gr = gg + a * run;
          if (l2s == T(0)) {
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) sum[j] += static_cast<double>(gr[j]);
          } else {
            const T* pr = pg + a * run;
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j)
              sum[j] += static_cast<double>(gc_effective_grad<T>(gr[j], pr[j], T(1), l2s));
          }
        }
      }
    });
    for (int64_t u = 0; u < U; ++u) {
      double total = 0.0;
      for (int64_t band = 0; band < bands; ++band)
        for (int64_t b = 0; b < B; ++b) total += acc[band * run + u * B + b];
      const T mean = static_cast<T>(static_cast<double>(s) * total / count);
      for (int64_t b = 0; b < B; ++b) means[u * B + b] = mean;
    }
    const int64_t offset = gi * A * run;
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      Op local = op;
      for (int64_t t = t0; t < t1; ++t) {
        int64_t a0, a1, j0, j1;
        task(t, &a0, &a1, &j0, &j1);
        for (int64_t a = a0; a < a1; ++a) {
          const int64_t o = offset + a * run;
          local.update_means(o + j0, o + j1, means.data() + j0);
        }
      }
      local.finish();
    });
  }
}

// A tensor's units as the kernels take them: units = {G, A, U, B} (see all_units); G = 0:
// no GC; A = 1: the units are rows (G * U of B elements).
template <typename T, typename Op>
void run_units(Op op, const T* g, const T* p, const at::Tensor& t, const int64_t* units, T s,
               T l2) {
  const int64_t G = units[0], A = units[1], U = units[2], B = units[3];
  if (G == 0) {  // no means: runs of elements, whatever the shape (a 1-d tensor's rows
                 // would be single elements, which do not vectorize)
    at::parallel_for(0, t.numel(), 32768, [&](int64_t j0, int64_t j1) {
      Op local = op;
      local.update(j0, j1, T(0));
      local.finish();
    });
  } else if (A == 1) {
    all_rows<T>(op, g, p, G * U, B, true, s, l2);
  } else {
    all_units<T>(op, g, p, G, A, U, B, s, l2);
  }
}

// Whether units (4 per tensor) describe every tensor: G * A * U * B elements, G = 0 or all >= 1.
// The product is built factor by factor, each step bounded by the element count, so that
// no values can wrap around int64 into a match.
bool units_fit(const std::vector<int64_t>& units, const std::vector<at::Tensor>& params) {
  if (units.size() != 4 * params.size()) return false;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t* u = units.data() + 4 * i;
    if (u[0] == 0 && u[1] == 0 && u[2] == 0 && u[3] == 0) continue;
    const int64_t numel = params[i].numel();
    int64_t product = 1;
    for (int k = 0; k < 4; ++k) {
      if (u[k] < 1 || product > numel / u[k]) return false;
      product *= u[k];
    }
    if (product != numel) return false;
  }
  return true;
}


}  // namespace

// Both entry points check every tensor before writing anything and return false, touching
// nothing, when one does not suit the kernels (a missing, strided or reshaped gradient, a
// state of another layout): the caller then takes its general path, which explains.
using Tensors = std::vector<c10::optional<at::Tensor>>;  // None: missing (declined)

bool gc_adam_(std::vector<at::Tensor> params, Tensors grads, Tensors exp_avgs,
              Tensors exp_avg_sqs, Tensors max_exp_avg_sqs, Tensors steps,
              std::vector<int64_t> units, double lr, double beta1, double beta2, double eps,
              double l2, double wd, bool decoupled, bool paper, bool maximize, bool amsgrad) {
  const size_t count = params.size();
  if (grads.size() != count || exp_avgs.size() != count || exp_avg_sqs.size() != count ||
      steps.size() != count || !units_fit(units, params) ||
      (amsgrad && max_exp_avg_sqs.size() != count))
    return false;
  for (size_t i = 0; i < count; ++i) {
    const auto& p = params[i];
    if (!kernel_param(p) || !like_param(grads[i], p) || !like_param(exp_avgs[i], p) ||
        !like_param(exp_avg_sqs[i], p) || (amsgrad && !like_param(max_exp_avg_sqs[i], p)) ||
        !step_tensor(steps[i]))
      return false;
  }
  for (size_t i = 0; i < count; ++i) {
    auto& p = params[i];
    const double t = bump(*steps[i]);
    if (p.numel() == 0) continue;
    double step_size, bc2_sqrt, decay, wd_update;
    gc_adam_coefficients(lr, beta1, beta2, t, wd, decoupled, paper, &step_size, &bc2_sqrt,
                         &decay, &wd_update);
    const int64_t* u = units.data() + 4 * i;
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gc_adam_", [&] {
      using T = scalar_t;
      T* pp = p.data_ptr<T>();
      const T* gp = grads[i]->data_ptr<T>();
      T* mp = exp_avgs[i]->data_ptr<T>();
      T* vp = exp_avg_sqs[i]->data_ptr<T>();
      T* vmp = amsgrad ? max_exp_avg_sqs[i]->data_ptr<T>() : nullptr;
      const T s = maximize ? T(-1) : T(1), l2t = static_cast<T>(l2),
              w1 = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2),
              w2 = static_cast<T>(1.0 - beta2), bc2 = static_cast<T>(bc2_sqrt),
              e = static_cast<T>(eps), ss = static_cast<T>(step_size),
              dc = static_cast<T>(decay), wu = static_cast<T>(wd_update);
      if (amsgrad) {
        run_units<T>(AdamOp<T, true>{pp, gp, mp, vp, vmp, s, l2t, w1, b2, w2, bc2, e, ss, dc, wu},
                     gp, pp, p, u, s, l2t);
      } else {
        run_units<T>(AdamOp<T, false>{pp, gp, mp, vp, vmp, s, l2t, w1, b2, w2, bc2, e, ss, dc, wu},
                     gp, pp, p, u, s, l2t);
      }
    });
  }
  return true;
}

bool gc_sgd_(std::vector<at::Tensor> params, Tensors grads, Tensors bufs,
             std::vector<bool> first, std::vector<int64_t> units, double lr, double momentum, double dampening, bool nesterov, double l2,
             bool maximize) {
  const size_t count = params.size();
  const bool has_buf = momentum != 0.0;
  if (grads.size() != count || !units_fit(units, params) ||
      (has_buf && (bufs.size() != count || first.size() != count)))
    return false;
  for (size_t i = 0; i < count; ++i) {
    const auto& p = params[i];
    if (!kernel_param(p) || !like_param(grads[i], p) || (has_buf && !like_param(bufs[i], p)))
      return false;
  }
  for (size_t i = 0; i < count; ++i) {
    auto& p = params[i];
    if (p.numel() == 0) continue;
    const int mode = !has_buf ? GC_SGD_PLAIN : (first[i] ? GC_SGD_FIRST : GC_SGD_MOMENTUM);
    const int64_t* u = units.data() + 4 * i;
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gc_sgd_", [&] {
      using T = scalar_t;
      T* pp = p.data_ptr<T>();
      const T* gp = grads[i]->data_ptr<T>();
      T* bp = has_buf ? bufs[i]->data_ptr<T>() : nullptr;
      const T s = maximize ? T(-1) : T(1), l2t = static_cast<T>(l2),
              mu = static_cast<T>(momentum), keep = static_cast<T>(1.0 - dampening),
              lrt = static_cast<T>(lr);
      auto run = [&](auto op) { run_units<T>(op, gp, pp, p, u, s, l2t); };
      if (mode == GC_SGD_PLAIN) {
        run(SgdOp<T, GC_SGD_PLAIN, false>{pp, gp, bp, s, l2t, mu, keep, lrt});
      } else if (mode == GC_SGD_FIRST) {
        if (nesterov) run(SgdOp<T, GC_SGD_FIRST, true>{pp, gp, bp, s, l2t, mu, keep, lrt});
        else run(SgdOp<T, GC_SGD_FIRST, false>{pp, gp, bp, s, l2t, mu, keep, lrt});
      } else {
        if (nesterov) run(SgdOp<T, GC_SGD_MOMENTUM, true>{pp, gp, bp, s, l2t, mu, keep, lrt});
        else run(SgdOp<T, GC_SGD_MOMENTUM, false>{pp, gp, bp, s, l2t, mu, keep, lrt});
      }
    });
  }
  return true;
}

// out = Φ(g + l2 * p), row by row: the centralized gradient handed to torch's foreach
// kernels, written in one pass while each row is in cache (torch ops need a second);
// with stream (and l2 = 0), by streaming stores.
bool gc_center_(std::vector<at::Tensor> outs, Tensors grads, std::vector<at::Tensor> params,
                double l2, bool stream) {
  const size_t count = params.size();
  if (grads.size() != count || outs.size() != count) return false;
  for (size_t i = 0; i < count; ++i) {
    const auto& p = params[i];
    if (!kernel_param(p) || !like_param(grads[i], p) || !like_param(outs[i], p)) return false;
  }
  for (size_t i = 0; i < count; ++i) {
    const auto& p = params[i];
    if (p.numel() == 0) continue;
    const int64_t n = rows(p), k = p.numel() / n;
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "gc_center_", [&] {
      using T = scalar_t;
      const T* pp = p.data_ptr<T>();
      const T* gp = grads[i]->data_ptr<T>();
      T* op = outs[i].data_ptr<T>();
      const T l2t = static_cast<T>(l2);
      if (l2t != T(0))
        all_rows<T>(CenterOp<T, true, false>{op, gp, pp, l2t}, gp, pp, n, k, true, T(1), l2t);
      // Streaming pays on rows of whole cache lines and more; a short row's stores would
      // share lines with its neighbours'.
      else if (kStreamingStores && stream && k * static_cast<int64_t>(sizeof(T)) >= 256)
        all_rows<T>(CenterOp<T, false, true>{op, gp, pp, l2t}, gp, pp, n, k, true, T(1), l2t);
      else
        all_rows<T>(CenterOp<T, false, false>{op, gp, pp, l2t}, gp, pp, n, k, true, T(1), l2t);
    });
  }
  return true;
}

namespace {

// float16/bfloat16 rows, converted a chunk of C elements at a time into float: bfloat16
// by bit shifts (round to nearest even on the way back, as c10::BFloat16), float16 by the
// F16C instructions where the CPU has them (else c10::Half's conversions). Written on the
// raw 16-bit values so that the compiler vectorizes the loops.
inline float bf16_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t r = static_cast<uint16_t>((u + (((u >> 16) & 1u) + 0x7FFFu)) >> 16);
  return f != f ? static_cast<uint16_t>(0x7FC0) : r;
}

template <bool BF16>
inline void load_chunk(const uint16_t* src, float* dst, int64_t n) {
  int64_t j = 0;
  if constexpr (BF16) {
    for (; j < n; ++j) dst[j] = bf16_to_float(src[j]);
  } else {
#if defined(__F16C__)
    for (; j + 8 <= n; j += 8)
      _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
#endif
    for (; j < n; ++j) dst[j] = static_cast<float>(c10::Half(src[j], c10::Half::from_bits()));
  }
}

template <bool BF16>
inline void store_chunk(const float* src, uint16_t* dst, int64_t n) {
  int64_t j = 0;
  if constexpr (BF16) {
    for (; j < n; ++j) dst[j] = float_to_bf16(src[j]);
  } else {
#if defined(__F16C__)
    for (; j + 8 <= n; j += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; j < n; ++j) dst[j] = c10::Half(src[j]).x;
  }
}

// out = g - mean(g) per row: the row's sum as row_mean's (float partial sums per chunk,
// double across chunks), the subtraction in float, rounded once: the core rule's float32
// arithmetic. A row is read once for its mean and again, from cache, for the result.
template <bool BF16>
void center_low_rows(uint16_t* out, const uint16_t* g, int64_t n, int64_t k) {
  at::parallel_for(0, n, grain(k), [&](int64_t r0, int64_t r1) {
    float buf[C];
    for (int64_t r = r0; r < r1; ++r) {
      const uint16_t* gr = g + r * k;
      uint16_t* orow = out + r * k;
      double acc = 0.0;
      for (int64_t j0 = 0; j0 < k; j0 += C) {
        const int64_t m = std::min(C, k - j0);
        load_chunk<BF16>(gr + j0, buf, m);
        float part[W] = {0.0f};
        int64_t j = 0;
        for (; j + W <= m; j += W)
          for (int64_t u = 0; u < W; ++u) part[u] += buf[j + u];
        for (; j < m; ++j) acc += static_cast<double>(buf[j]);
        for (int64_t u = 0; u < W; ++u) acc += static_cast<double>(part[u]);
      }
      const float mean = static_cast<float>(acc / static_cast<double>(k));
      for (int64_t j0 = 0; j0 < k; j0 += C) {
        const int64_t m = std::min(C, k - j0);
        load_chunk<BF16>(gr + j0, buf, m);
        for (int64_t j = 0; j < m; ++j) buf[j] -= mean;
        store_chunk<BF16>(buf, orow + j0, m);
      }
    }
  });
}

}  // namespace

// Rows of float16/bfloat16 tensors centralized (out may be g): false, touching nothing,
// unless every pair is contiguous on the CPU with one shape and dtype.
bool gc_center_low_(std::vector<at::Tensor> outs, std::vector<at::Tensor> grads) {
  const size_t count = grads.size();
  if (outs.size() != count) return false;
  for (size_t i = 0; i < count; ++i) {
    const auto& g = grads[i];
    const auto& o = outs[i];
    if (!plain(g) || !plain(o) || !g.is_contiguous() || !o.is_contiguous() ||
        g.sizes() != o.sizes() || g.scalar_type() != o.scalar_type() ||
        (g.scalar_type() != at::kHalf && g.scalar_type() != at::kBFloat16))
      return false;
  }
  for (size_t i = 0; i < count; ++i) {
    const auto& g = grads[i];
    if (g.numel() == 0) continue;
    const int64_t n = rows(g), k = g.numel() / n;
    auto* op = static_cast<uint16_t*>(outs[i].data_ptr());
    const auto* gp = static_cast<const uint16_t*>(g.data_ptr());
    if (g.scalar_type() == at::kBFloat16)
      center_low_rows<true>(op, gp, n, k);
    else
      center_low_rows<false>(op, gp, n, k);
  }
  return true;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gc_center_low_", &gc_center_low_,
        "Rows of float16/bfloat16 tensors: out = g - mean(g) in float, rounded once; false "
        "(nothing written) if a tensor does not suit");
  m.def("gc_adam_", &gc_adam_,
        "Row- or unit-blocked GC-Adam/AdamW step in place (units: G, A, U, B per tensor, "
        "G = 0 without GC); false (nothing written) if a tensor does not suit");
  m.def("gc_center_", &gc_center_,
        "Row-blocked out = GC(g + l2 * p) (streaming stores with stream and l2 = 0); false "
        "(nothing written) if a tensor does not suit");
  m.def("gc_sgd_", &gc_sgd_,
        "Row- or unit-blocked GC-SGD step in place (units as gc_adam_'s); false (nothing "
        "written) if a tensor does not suit");
}
