// CPU kernels for Adam/AdamW, AMSGrad, Adamax, Nadam, RAdam, AdaX, LAMB, LARS, Lion, AdaGrad, Amos,
// Adadelta, RMSProp, Rprop, SGD, Funnelled SGDM, NovoGrad, SM3 and Adafactor, called from XLA
// through its FFI.
//
// XLA:CPU writes each output buffer of an elementwise update in its own loop, so an Adam step
// reads the gradient and the moments several times (40 bytes per parameter where 28 suffice).
// These kernels read every input once and write every output once, over the leaves of a pytree
// (up to 4 a call, see _fused.py), split into chunks that XLA's intra-op thread pool and the
// calling thread share.  The formulas, and the order of their float32 operations, are those of
// the chains in _adam.py, _nadam.py, _radam.py, _trust_ratio.py, _lion.py, _adagrad.py,
// _adadelta.py, _rmsprop.py, _rprop.py, _momentum.py, _novograd.py, _sm3.py, _adafactor.py,
// _adax.py, _amos.py and _funnelled_sgdm.py
// (see _fused.py); the in-place buffers (params in "step" mode, the moments always) are
// aliased to their results by the caller.
//
// Operands of the kernels but Adafactor's: hyper (f32[k], the step's scalars), decay (f32[L],
// the weight decay of each of the L leaves), then L params, L gradients and L of each state
// buffer (or one flat buffer of each). Results: L outputs (updates, or the new params in step
// mode), then the state buffers as they came.

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 1 << 16;  // elements per task: 256 KiB of each float32 buffer

struct Leaf {
  float* p;        // params: read (decay, step mode), written in step mode
  const float* g;  // gradient
  float* m;        // the first state buffer (a moment, a momentum), in place (may be null)
  float* v;        // the second state buffer, in place (may be null)
  float* w;        // the third state buffer, in place (may be null)
  float* out;      // updates (update mode; null in step mode)
  int64_t n;
  float decay;   // the leaf's weight decay (NovoGrad: the denominator of its normalised gradient)
  float ratio;  // LAMB, LARS: the leaf's trust ratio, between their two passes
};

// Runs task(j) for j in [0, total) on the pool's threads and this one. The caller only waits
// for tasks that were taken, so a helper the pool starts late finds no work and returns without
// touching the task: no deadlock when every pool thread is busy.
template <typename Task>
void parallel_for(ffi::ThreadPool& pool, int64_t total, Task task) {
  struct Shared {
    std::atomic<int64_t> next{0}, finished{0};
  };
  auto shared = std::make_shared<Shared>();
  auto run = [shared, task, total]() {
    for (int64_t j; (j = shared->next.fetch_add(1)) < total;) {
      task(j);
      shared->finished.fetch_add(1);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), total - 1);
  for (int64_t k = 0; k < helpers; ++k) {
    auto helper = run;
    pool.Schedule(std::move(helper));
  }
  run();
  while (shared->finished.load() < total) std::this_thread::yield();
}

// Runs body(leaf, begin, end, chunk) over all leaves in chunks of kChunk elements, numbered leaf by leaf.
template <typename Body>
void parallel_chunks(ffi::ThreadPool& pool, std::shared_ptr<std::vector<Leaf>> leaves, Body body) {
  auto chunks = std::make_shared<std::vector<std::pair<int64_t, int64_t>>>();  // (leaf, begin)
  for (int64_t i = 0; i < static_cast<int64_t>(leaves->size()); ++i)
    for (int64_t b = 0; b < (*leaves)[i].n; b += kChunk) chunks->emplace_back(i, b);
  parallel_for(pool, static_cast<int64_t>(chunks->size()), [chunks, leaves, body](int64_t j) {
    const auto [i, b] = (*chunks)[j];
    const Leaf& leaf = (*leaves)[i];
    body(leaf, b, std::min(b + kChunk, leaf.n), j);
  });
}

float* data(const ffi::AnyBuffer& b) { return static_cast<float*>(b.untyped_data()); }

// The params, gradient and output of leaf i of L (the params are the output in step mode, aliased).
ffi::Error leaf_io(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets, size_t L, size_t i, bool step,
                   Leaf& leaf) {
  auto p = args.get<ffi::AnyBuffer>(i), g = args.get<ffi::AnyBuffer>(L + i);
  auto out = rets.get<ffi::AnyBuffer>(i);
  if (!p.has_value() || !g.has_value() || !out.has_value())
    return ffi::Error::InvalidArgument("fused optimizer: bad buffer");
  leaf.n = static_cast<int64_t>(g->element_count());
  leaf.g = data(*g);
  leaf.p = step ? data(**out) : data(*p);
  leaf.out = step ? nullptr : data(**out);
  if (step && leaf.p != data(*p)) return ffi::Error::InvalidArgument("fused optimizer: params not aliased");
  return ffi::Error::Success();
}

// The state buffer that is operand ``arg`` and result ``ret`` (one memory: aliased), of ``n`` elements.
ffi::ErrorOr<float*> state_buffer(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets, size_t arg,
                                  size_t ret, int64_t n) {
  auto in = args.get<ffi::AnyBuffer>(arg);
  auto res = rets.get<ffi::AnyBuffer>(ret);
  if (!in.has_value() || !res.has_value() || data(*in) != data(**res))
    return ffi::Unexpected(ffi::Error::InvalidArgument("fused optimizer: state not aliased"));
  if (static_cast<int64_t>(in->element_count()) != n)
    return ffi::Unexpected(ffi::Error::InvalidArgument("fused optimizer: state of the wrong size"));
  return data(**res);
}

// Collects the leaves; state buffers (and params in step mode) must be aliased to their results.
// Each state buffer comes either per leaf (L operands) or flat (one operand holding the leaves
// one after another, in order: flat_state=True); with one leaf the two are the same.
ffi::ErrorOr<std::shared_ptr<std::vector<Leaf>>> collect(const ffi::Buffer<ffi::F32>& decay,
                                                         const ffi::RemainingArgs& args,
                                                         const ffi::RemainingRets& rets,
                                                         int n_state, bool step, size_t L) {
  const bool per_leaf = args.size() == (2 + n_state) * L && rets.size() == (1 + n_state) * L;
  const bool flat = args.size() == 2 * L + n_state && rets.size() == L + n_state;
  if (!per_leaf && !flat) return ffi::Unexpected(ffi::Error::InvalidArgument("fused optimizer: wrong number of buffers"));
  auto leaves = std::make_shared<std::vector<Leaf>>(L);
  int64_t total = 0;
  for (size_t i = 0; i < L; ++i) {
    Leaf& leaf = (*leaves)[i];
    if (auto e = leaf_io(args, rets, L, i, step, leaf); e.failure()) return ffi::Unexpected(e);
    leaf.decay = decay.typed_data()[i];
    total += leaf.n;
  }
  for (int k = 0; k < n_state; ++k) {
    float* Leaf::*field = k == 0 ? &Leaf::m : (k == 1 ? &Leaf::v : &Leaf::w);
    if (flat && !per_leaf) {
      auto buffer = state_buffer(args, rets, 2 * L + k, L + k, total);
      if (!buffer.has_value()) return ffi::Unexpected(buffer.error());
      float* at = *buffer;
      for (Leaf& leaf : *leaves) leaf.*field = at, at += leaf.n;
      continue;
    }
    for (size_t i = 0; i < L; ++i) {
      auto buffer = state_buffer(args, rets, (2 + k) * L + i, (1 + k) * L + i, (*leaves)[i].n);
      if (!buffer.has_value()) return ffi::Unexpected(buffer.error());
      (*leaves)[i].*field = *buffer;
    }
  }
  return leaves;
}

// out = p + d (step mode) or out = d (update mode), d = -lr * direction.
template <bool kStep>
inline void emit(float* __restrict out, float* __restrict p, int64_t i, float d) {
  if (kStep) p[i] = p[i] + d; else out[i] = d;
}

using Loop = void (*)(const Leaf&, int64_t, int64_t, const float*);

// The entry of the one-pass kernels: kScalars scalars in hyper, n_state state buffers per leaf,
// and per chunk ``plain`` or, on a leaf with a weight decay, ``decayed``.
template <int kScalars>
ffi::Error one_pass(const char* name, ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& hyper,
                    const ffi::Buffer<ffi::F32>& decay, const ffi::RemainingArgs& args,
                    const ffi::RemainingRets& rets, int n_state, bool step, Loop plain, Loop decayed) {
  if (hyper.element_count() != kScalars) return ffi::Error::InvalidArgument(std::string(name) + ": wrong scalars");
  auto leaves = collect(decay, args, rets, n_state, step, decay.element_count());
  if (!leaves.has_value()) return leaves.error();
  std::array<float, kScalars> h;
  std::copy(hyper.typed_data(), hyper.typed_data() + kScalars, h.begin());
  parallel_chunks(pool, *leaves, [h, plain, decayed](const Leaf& leaf, int64_t lo, int64_t hi, int64_t) {
    (leaf.decay != 0.0f ? decayed : plain)(leaf, lo, hi, h.data());
  });
  return ffi::Error::Success();
}

// The entry of a one-pass kernel NAME whose loop is NAME_loop<kStep>: kScalars scalars, kState
// state buffers per leaf.
#define ONE_PASS_ENTRY(NAME, kScalars, kState)                                                             \
  ffi::Error NAME(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> decay,          \
                  ffi::RemainingArgs args, ffi::RemainingRets rets, bool step) {                           \
    const Loop loop = step ? NAME##_loop<true> : NAME##_loop<false>;                                       \
    return one_pass<kScalars>("fused " #NAME, pool, hyper, decay, args, rets, kState, step, loop, loop);   \
  }

// Adam's moments at element i, updated in place: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2
// (scale_by_adam's order of operations); returns the new (m, v).
struct Moments {
  float m, v;
};

inline Moments adam_moments(float* __restrict m, float* __restrict v, int64_t i, float gi, float b1, float ob1,
                            float b2, float ob2) {
  const Moments out{b1 * m[i] + ob1 * gi, b2 * v[i] + ob2 * (gi * gi)};
  m[i] = out.m;
  v[i] = out.v;
  return out;
}

// Adam and AdamW (scale_by_adam, add_decayed_weights, scale_by_learning_rate):
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  u = m / c1 / (sqrt(v / c2) + eps)
//   u = u + lambda p;  d = -lr u
template <bool kStep, bool kDecay>
void adam_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], c1 = h[4], c2 = h[5], eps = h[6], nlr = h[7];
  const float lam = leaf.decay;
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict v = leaf.v;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const auto [mi, vi] = adam_moments(m, v, i, gi, b1, ob1, b2, ob2);
    float u = mi / c1 / (std::sqrt(vi / c2) + eps);
    if (kDecay) u = u + lam * p[i];
    emit<kStep>(out, p, i, nlr * u);
  }
}

ffi::Error adam(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> decay,
                ffi::RemainingArgs args, ffi::RemainingRets rets, bool step) {
  const Loop plain = step ? adam_loop<true, false> : adam_loop<false, false>;
  const Loop decayed = step ? adam_loop<true, true> : adam_loop<false, true>;
  return one_pass<8>("fused adam", pool, hyper, decay, args, rets, 2, step, plain, decayed);
}

// jnp.maximum: NaN if either is NaN.
inline float nan_max(float a, float b) { return a != a ? a : (b != b ? b : (a > b ? a : b)); }

// jnp.minimum: NaN if either is NaN.
inline float nan_min(float a, float b) { return a != a ? a : (b != b ? b : (a < b ? a : b)); }

// AMSGrad (scale_by_amsgrad, scale_by_learning_rate), with Adam's m and v:
//   corrected: w = max(w, v / c2), u = m / c1 / (sqrt(w) + eps);
//   raw:       w = max(w, v),      u = m / c1 / (sqrt(w / c2) + eps);   d = -lr u
template <bool kStep, bool kRaw>
void amsgrad_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], c1 = h[4], c2 = h[5], eps = h[6], nlr = h[7];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict v = leaf.v;
  float* __restrict w = leaf.w;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const auto [mi, vi] = adam_moments(m, v, i, gi, b1, ob1, b2, ob2);
    const float wi = nan_max(w[i], kRaw ? vi : vi / c2);
    w[i] = wi;
    emit<kStep>(out, p, i, nlr * (mi / c1 / ((kRaw ? std::sqrt(wi / c2) : std::sqrt(wi)) + eps)));
  }
}

ffi::Error amsgrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> decay,
                   ffi::RemainingArgs args, ffi::RemainingRets rets, bool raw, bool step) {
  const Loop loops[2][2] = {{amsgrad_loop<false, false>, amsgrad_loop<false, true>},
                            {amsgrad_loop<true, false>, amsgrad_loop<true, true>}};
  const Loop loop = loops[step][raw];
  return one_pass<8>("fused amsgrad", pool, hyper, decay, args, rets, 3, step, loop, loop);
}

// Adamax (scale_by_adamax, scale_by_learning_rate):
//   m = b1 m + (1-b1) g;  v = max(b2 v, |g| + eps);  d = -lr m / (c1 v)
template <bool kStep>
void adamax_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], eps = h[3], c1 = h[4], nlr = h[5];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict v = leaf.v;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const float mi = b1 * m[i] + ob1 * gi;
    const float vi = nan_max(b2 * v[i], std::fabs(gi) + eps);
    m[i] = mi;
    v[i] = vi;
    emit<kStep>(out, p, i, nlr * (mi / (c1 * vi)));
  }
}

ONE_PASS_ENTRY(adamax, 6, 2)

// Nadam (scale_by_nadam, scale_by_learning_rate), with Adam's m and v:
//   u = ((1-mu_t) g / (1-prod_t) + mu_{t+1} m / (1-prod_{t+1})) / (sqrt(v / c2) + eps);  d = -lr u
// hyper: b1, 1-b1, b2, 1-b2, c2, eps, 1-mu_t, 1-prod_t, mu_{t+1}, 1-prod_{t+1}, -lr.
template <bool kStep>
void nadam_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], c2 = h[4], eps = h[5];
  const float k1 = h[6], k2 = h[7], k3 = h[8], k4 = h[9], nlr = h[10];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict v = leaf.v;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const auto [mi, vi] = adam_moments(m, v, i, gi, b1, ob1, b2, ob2);
    const float nesterov = k1 * gi / k2 + k3 * mi / k4;
    emit<kStep>(out, p, i, nlr * (nesterov / (std::sqrt(vi / c2) + eps)));
  }
}

ONE_PASS_ENTRY(nadam, 11, 2)

// RAdam (scale_by_radam, scale_by_learning_rate), with Adam's m and v:
//   rectified (rho_t > threshold): u = r (m / c1) / (sqrt(v / c2) + eps), or with eps on the raw
//   root r sqrt(c2) / (sqrt(v) + eps) (m / c1);  else u = m / c1;  d = -lr u
// hyper: b1, 1-b1, b2, 1-b2, c1, c2, eps, rectified (1 or 0), r, sqrt(c2), -lr.
template <bool kStep, bool kRectified, bool kRawSqrt>
void radam_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], c1 = h[4], c2 = h[5], eps = h[6];
  const float r = h[8], root_c2 = h[9], nlr = h[10];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict v = leaf.v;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const auto [mi, vi] = adam_moments(m, v, i, gi, b1, ob1, b2, ob2);
    float factor = 1.0f;
    if (kRectified) factor = r * (kRawSqrt ? root_c2 / (std::sqrt(vi) + eps) : 1.0f / (std::sqrt(vi / c2) + eps));
    emit<kStep>(out, p, i, nlr * (factor * (mi / c1)));
  }
}

ffi::Error radam(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> decay,
                 ffi::RemainingArgs args, ffi::RemainingRets rets, bool eps_on_raw_sqrt, bool step) {
  if (hyper.element_count() != 11) return ffi::Error::InvalidArgument("fused radam: wrong scalars");
  const bool rectified = hyper.typed_data()[7] != 0.0f;
  const Loop loops[2][2][2] = {  // [step][rectified][raw]
      {{radam_loop<false, false, false>, radam_loop<false, false, true>},
       {radam_loop<false, true, false>, radam_loop<false, true, true>}},
      {{radam_loop<true, false, false>, radam_loop<true, false, true>},
       {radam_loop<true, true, false>, radam_loop<true, true, true>}}};
  const Loop loop = loops[step][rectified][eps_on_raw_sqrt];
  return one_pass<11>("fused radam", pool, hyper, decay, args, rets, 2, step, loop, loop);
}

// Sums over a chunk: within a block of kBlock elements, kLanes float32 partial sums (a
// vectorizable reduction: each lane adds its 64 terms in order); the blocks' sums in double,
// in order. Chunks' sums are then added in chunk order, so no result depends on the number
// of threads.
constexpr int kLanes = 16;
constexpr int64_t kBlock = 1024;

template <int kSums>
using Sums = std::array<double, kSums>;

// The kSums sums of term(e) (a std::array<float, kSums>) over count elements from lo (a
// multiple of kLanes): kLanes float32 partial sums each, a vectorizable reduction.
template <int kSums, typename Term>
inline Sums<kSums> lanes(int64_t lo, int64_t count, Term term) {
  float acc[kSums][kLanes] = {};
  for (int64_t e = lo; e < lo + count; e += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const std::array<float, kSums> t = term(e + k);
      for (int q = 0; q < kSums; ++q) acc[q][k] += t[q];
    }
  Sums<kSums> total{};
  for (int q = 0; q < kSums; ++q)
    for (int k = 0; k < kLanes; ++k) total[q] += acc[q][k];
  return total;
}

// The sums of term(e) over [lo, hi), in one sweep: lanes of kBlock elements, the blocks' sums
// in double; the order depends only on lo and hi. Several sums in one sweep read each input
// once (a pass that only reads runs at about half the bandwidth of one that also writes).
template <int kSums, typename Term>
inline Sums<kSums> lane_sums(int64_t lo, int64_t hi, Term term) {
  Sums<kSums> total{};
  auto add = [&total](const Sums<kSums>& part) {
    for (int q = 0; q < kSums; ++q) total[q] += part[q];
  };
  int64_t i = lo;
  for (; i + kBlock <= hi; i += kBlock) add(lanes<kSums>(i, kBlock, term));
  const int64_t rest = (hi - i) / kLanes * kLanes;
  add(lanes<kSums>(i, rest, term));
  for (i += rest; i < hi; ++i) {
    const std::array<float, kSums> t = term(i);
    for (int q = 0; q < kSums; ++q) total[q] += t[q];
  }
  return total;
}

// The sum of term(e) (a float) over [lo, hi), as lane_sums.
template <typename Term>
inline double lane_sum(int64_t lo, int64_t hi, Term term) {
  return lane_sums<1>(lo, hi, [&term](int64_t e) { return std::array<float, 1>{term(e)}; })[0];
}

// Per-leaf sums of squares of a and b (LAMB, LARS), chunk by chunk.
struct LeafSums {
  std::vector<int64_t> first;  // leaf i's chunks are first[i] .. first[i+1]-1
  std::shared_ptr<std::vector<double>> sums;  // per chunk: sum a^2, sum b^2

  explicit LeafSums(const std::vector<Leaf>& leaves) : first(leaves.size() + 1, 0) {
    for (size_t i = 0; i < leaves.size(); ++i) first[i + 1] = first[i] + (leaves[i].n + kChunk - 1) / kChunk;
    sums = std::make_shared<std::vector<double>>(2 * first.back(), 0.0);
  }
  // The leaf's norms (|a|, |b|) once every chunk has been summed.
  std::pair<float, float> norms(size_t i) const {
    double a = 0.0, b = 0.0;
    for (int64_t j = first[i]; j < first[i + 1]; ++j) a += (*sums)[2 * j], b += (*sums)[2 * j + 1];
    return {static_cast<float>(std::sqrt(a)), static_cast<float>(std::sqrt(b))};
  }
};

// LAMB (scale_by_adam, add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate), two passes:
//   1. m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  r = m / c1 / (sqrt(v / c2) + eps) + lambda p,
//      and per leaf the sums of r^2 and p^2 (in double, per chunk, added in chunk order);
//   2. ratio = coef phi(|p|) / |r| (1 where either norm is 0 or the leaf is masked out),
//      d = -lr (ratio r), with r recomputed from the new m, v and the unchanged p.
// hyper: b1, 1-b1, b2, 1-b2, c1, c2, eps, coef, min |p|, max |p|, -lr; decay: L decays, then L
// trust-ratio flags (1 or 0).
template <bool kStep>
void lamb_apply(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float c1 = h[4], c2 = h[5], eps = h[6], nlr = h[10], lam = leaf.decay, ratio = leaf.ratio;
  float* __restrict p = leaf.p;
  const float* __restrict m = leaf.m;
  const float* __restrict v = leaf.v;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float r = m[i] / c1 / (std::sqrt(v[i] / c2) + eps) + lam * p[i];
    emit<kStep>(out, p, i, nlr * (ratio * r));
  }
}

ffi::Error lamb(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> decay,
                ffi::RemainingArgs args, ffi::RemainingRets rets, bool step) {
  if (hyper.element_count() != 11) return ffi::Error::InvalidArgument("fused lamb: 11 scalars expected");
  const size_t L = decay.element_count() / 2;
  auto found = collect(decay, args, rets, 2, step, L);
  if (!found.has_value()) return found.error();
  auto leaves = *found;
  float h[11];
  std::copy(hyper.typed_data(), hyper.typed_data() + 11, h);
  LeafSums sums(*leaves);
  auto partial = sums.sums;
  parallel_chunks(pool, leaves, [h, partial](const Leaf& leaf, int64_t lo, int64_t hi, int64_t j) {
    const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], c1 = h[4], c2 = h[5], eps = h[6];
    const float lam = leaf.decay;
    const float* __restrict p = leaf.p;
    const float* __restrict g = leaf.g;
    float* __restrict m = leaf.m;
    float* __restrict v = leaf.v;
    auto element = [&](int64_t e) {
      const float gi = g[e];
      const auto [mi, vi] = adam_moments(m, v, e, gi, b1, ob1, b2, ob2);
      return mi / c1 / (std::sqrt(vi / c2) + eps) + lam * p[e];
    };
    const auto both = lane_sums<2>(lo, hi, [&](int64_t e) {
      const float r = element(e);
      return std::array<float, 2>{r * r, p[e] * p[e]};
    });
    (*partial)[2 * j] = both[0], (*partial)[2 * j + 1] = both[1];
  });
  const float* on = decay.typed_data() + L;
  for (size_t i = 0; i < L; ++i) {
    const auto [r_norm, raw_p_norm] = sums.norms(i);
    const float p_norm = std::min(std::max(raw_p_norm, h[8]), h[9]);
    (*leaves)[i].ratio = (on[i] != 0.0f && r_norm != 0.0f && p_norm != 0.0f) ? h[7] * p_norm / r_norm : 1.0f;
  }
  parallel_chunks(pool, leaves, [h, step](const Leaf& leaf, int64_t lo, int64_t hi, int64_t) {
    step ? lamb_apply<true>(leaf, lo, hi, h) : lamb_apply<false>(leaf, lo, hi, h);
  });
  return ffi::Error::Success();
}

// LARS (scale_by_lars, scale_by_learning_rate, trace), two passes:
//   1. per leaf |g| and |w|;
//   2. ratio = coef |w| / (|g| + beta |w| + eps) (1 where |w| = 0, the denominator is 0 or the
//      leaf is masked out);  u = -lr (ratio (g + beta w));  m = u + mu m;  w += m (or u + mu m).
// hyper: coef, eps, mu, -lr; decay: L betas (0 where not decayed), then L trust-ratio flags.
template <bool kStep, bool kNesterov>
void lars_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float mu = h[2], nlr = h[3], beta = leaf.decay, ratio = leaf.ratio;
  float* __restrict w = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float u = nlr * (ratio * (g[i] + beta * w[i]));
    const float mi = u + mu * m[i];
    m[i] = mi;
    emit<kStep>(out, w, i, kNesterov ? u + mu * mi : mi);
  }
}

ffi::Error lars(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> decay,
                ffi::RemainingArgs args, ffi::RemainingRets rets, bool nesterov, bool step) {
  if (hyper.element_count() != 4) return ffi::Error::InvalidArgument("fused lars: 4 scalars expected");
  const size_t L = decay.element_count() / 2;
  auto found = collect(decay, args, rets, 1, step, L);
  if (!found.has_value()) return found.error();
  auto leaves = *found;
  float h[4];
  std::copy(hyper.typed_data(), hyper.typed_data() + 4, h);
  LeafSums sums(*leaves);
  auto partial = sums.sums;
  parallel_chunks(pool, leaves, [partial](const Leaf& leaf, int64_t lo, int64_t hi, int64_t j) {
    const float* __restrict g = leaf.g;
    const float* __restrict w = leaf.p;
    const auto both = lane_sums<2>(lo, hi, [g, w](int64_t e) { return std::array<float, 2>{g[e] * g[e], w[e] * w[e]}; });
    (*partial)[2 * j] = both[0], (*partial)[2 * j + 1] = both[1];
  });
  const float* on = decay.typed_data() + L;
  for (size_t i = 0; i < L; ++i) {
    Leaf& leaf = (*leaves)[i];
    const auto [g_norm, w_norm] = sums.norms(i);
    const float den = g_norm + leaf.decay * w_norm;
    leaf.ratio = (on[i] != 0.0f && w_norm != 0.0f && den != 0.0f) ? h[0] * w_norm / (den + h[1]) : 1.0f;
  }
  const Loop loops[2][2] = {{lars_loop<false, false>, lars_loop<false, true>},
                            {lars_loop<true, false>, lars_loop<true, true>}};
  const Loop loop = loops[step][nesterov];
  parallel_chunks(pool, leaves, [h, loop](const Leaf& leaf, int64_t lo, int64_t hi, int64_t) { loop(leaf, lo, hi, h); });
  return ffi::Error::Success();
}

// Lion (scale_by_lion, add_decayed_weights, scale_by_learning_rate):
//   u = sign(b1 m + (1-b1) g);  m = b2 m + (1-b2) g;  u = u + lambda p;  d = -lr u
inline float sign(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x); }  // 0, -0 and NaN kept

template <bool kStep, bool kDecay>
void lion_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], nlr = h[4], lam = leaf.decay;
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i], mi = m[i];
    float u = sign(b1 * mi + ob1 * gi);
    m[i] = b2 * mi + ob2 * gi;
    if (kDecay) u = u + lam * p[i];
    emit<kStep>(out, p, i, nlr * u);
  }
}

ffi::Error lion(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> decay,
                ffi::RemainingArgs args, ffi::RemainingRets rets, bool step) {
  const Loop plain = step ? lion_loop<true, false> : lion_loop<false, false>;
  const Loop decayed = step ? lion_loop<true, true> : lion_loop<false, true>;
  return one_pass<5>("fused lion", pool, hyper, decay, args, rets, 1, step, plain, decayed);
}

// AdaX (scale_by_adax, scale_by_learning_rate), v the bias-corrected v_hat:
//   m = b1 m + (1-b1) g;  v = v + w (g^2 - v);  d = -lr m / (sqrt(v) + eps)
template <bool kStep>
void adax_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], w = h[2], eps = h[3], nlr = h[4];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict v = leaf.v;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const float mi = b1 * m[i] + ob1 * gi;
    const float vi = v[i] + w * (gi * gi - v[i]);
    m[i] = mi;
    v[i] = vi;
    emit<kStep>(out, p, i, nlr * (mi / (std::sqrt(vi) + eps)));
  }
}

ONE_PASS_ENTRY(adax, 5, 2)

// exp(x) in float32 within about 1 ulp, in arithmetic that GCC vectorizes (std::exp is a libm call
// per element: it made Funnelled SGDM's pass 2x slower than XLA's). Cephes' expf: x = n ln2 + r,
// |r| <= ln2/2, a degree-7 polynomial in r, times 2^n in two factors (so that the result
// overflows to inf and underflows gradually to 0 where exp does); NaN stays NaN.
inline float exp_f32(float x) {
  const float xc = x != x ? 0.0f : std::min(std::max(x, -104.0f), 89.0f);
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // nearest (1.5 2^23)
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  float q = 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const float y = q * r * r + r + 1.0f;
  const int32_t k = static_cast<int32_t>(n), k1 = k >> 1, k2 = k - k1;
  const float s1 = __builtin_bit_cast(float, (k1 + 127) << 23), s2 = __builtin_bit_cast(float, (k2 + 127) << 23);
  return x != x ? x : y * s1 * s2;
}

// Funnelled SGDM (scale_by_funnelled_sgdm, scale_by_learning_rate), s the new global scale
// (from XLA's dot product u.g over every leaf):
//   p = p exp(gamma_p m g);  m = beta m + (1-beta) g;  u = mu u + p g;  d = -lr (s u)
template <bool kStep>
void funnelled_sgdm_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float gp = h[0], beta = h[1], obeta = h[2], mu = h[3], scale = h[4], nlr = h[5];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict gain = leaf.m;
  float* __restrict avg = leaf.v;
  float* __restrict u = leaf.w;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const float q = gain[i] * exp_f32(gp * avg[i] * gi);
    const float ui = mu * u[i] + q * gi;
    gain[i] = q;
    avg[i] = beta * avg[i] + obeta * gi;
    u[i] = ui;
    emit<kStep>(out, p, i, nlr * (scale * ui));
  }
}

ONE_PASS_ENTRY(funnelled_sgdm, 6, 3)

// Amos, element granularity (scale_by_amos, scale_by_ema or identity, scale_by_learning_rate):
//   v = beta v + (1-beta) g^2;  r = (1-beta^t) / max(v, eps);  c = (1 + s_c b)^(-1/2);
//   d = 1 / (1 + s_d b);  gx = c xi r g^2;  u = d (eta sqrt(r) g + 0.5 gx p);  b = b + xi gx (1 + b);
//   [m = mu m + (1-mu) u, u = m];  -lr u.  Per leaf: eta (decay), s_d = d_coef sqrt(xi eta) (ratio).
template <bool kStep, bool kMomentum>
void amos_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float beta = h[0], obeta = h[1], corr = h[2], eps = h[3], sc = h[4], xi = h[5], mu = h[6], omu = h[7];
  const float nlr = h[8], eta = leaf.decay, sd = leaf.ratio;
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict v = leaf.m;
  float* __restrict b = leaf.v;
  float* __restrict m = leaf.w;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i], g2 = gi * gi, bi = b[i];
    const float vi = beta * v[i] + obeta * g2;
    v[i] = vi;
    const float r = corr / nan_max(vi, eps);
    const float c = 1.0f / std::sqrt(1.0f + sc * bi);
    const float d = 1.0f / (1.0f + sd * bi);
    const float gx = c * xi * r * g2;
    float u = d * (eta * std::sqrt(r) * gi + 0.5f * gx * p[i]);
    b[i] = bi + xi * gx * (1.0f + bi);
    if (kMomentum) {
      u = mu * m[i] + omu * u;
      m[i] = u;
    }
    emit<kStep>(out, p, i, nlr * u);
  }
}

ffi::Error amos(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> info,
                ffi::RemainingArgs args, ffi::RemainingRets rets, bool momentum, bool step) {
  if (hyper.element_count() != 9) return ffi::Error::InvalidArgument("fused amos: 9 scalars expected");
  const size_t L = info.element_count() / 2;
  auto found = collect(info, args, rets, momentum ? 3 : 2, step, L);
  if (!found.has_value()) return found.error();
  auto leaves = *found;
  for (size_t i = 0; i < L; ++i) (*leaves)[i].ratio = info.typed_data()[L + i];
  std::array<float, 9> h;
  std::copy(hyper.typed_data(), hyper.typed_data() + 9, h.begin());
  const Loop loop = momentum ? (step ? amos_loop<true, true> : amos_loop<false, true>)
                             : (step ? amos_loop<true, false> : amos_loop<false, false>);
  parallel_chunks(pool, leaves, [h, loop](const Leaf& leaf, int64_t lo, int64_t hi, int64_t) {
    loop(leaf, lo, hi, h.data());
  });
  return ffi::Error::Success();
}

// AdaGrad (scale_by_rss, scale_by_learning_rate):  v = v + g g;  d = -lr g / (sqrt(v) + eps)
template <bool kStep>
void adagrad_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float eps = h[0], nlr = h[1];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict v = leaf.m;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const float vi = v[i] + gi * gi;
    v[i] = vi;
    emit<kStep>(out, p, i, nlr * (gi / (std::sqrt(vi) + eps)));
  }
}

ONE_PASS_ENTRY(adagrad, 2, 1)

// Adadelta (scale_by_adadelta, scale_by_learning_rate):
//   v = rho v + (1-rho) g g;  d = sqrt((x + eps) / (v + eps)) g;  x = rho x + (1-rho) d d;  -lr d
template <bool kStep>
void adadelta_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float rho = h[0], orho = h[1], eps = h[2], nlr = h[3];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict v = leaf.m;
  float* __restrict x = leaf.v;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i];
    const float vi = rho * v[i] + (orho * gi) * gi;
    const float xi = x[i];
    const float d = std::sqrt((xi + eps) / (vi + eps)) * gi;
    v[i] = vi;
    x[i] = rho * xi + (orho * d) * d;
    emit<kStep>(out, p, i, nlr * d);
  }
}

ONE_PASS_ENTRY(adadelta, 4, 2)

// NovoGrad (scale_by_novograd, scale_by_learning_rate), with each leaf's denominator
// den = sqrt(v) + eps (no eps at the first step; 1 where that is 0), from the per-leaf second
// moment v the caller computes from the leaf's sum of squares:
//   m = b1 m + g / den + lambda w;  d = -lr m
// hyper: b1, lambda, -lr; decay: the L denominators.
template <bool kStep>
void novograd_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], lam = h[1], nlr = h[2], den = leaf.decay;
  float* __restrict w = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float mi = b1 * m[i] + g[i] / den + lam * w[i];
    m[i] = mi;
    emit<kStep>(out, w, i, nlr * mi);
  }
}

ONE_PASS_ENTRY(novograd, 3, 1)

// RMSProp (scale_by_rms, [trace], scale_by_learning_rate), on v, [the mean a (centered)], [the momentum b]:
//   v' = rho v + ((1-rho) g) g;  s = v' or (centered) rho (v - a a) + ((rho (1-rho)) (g - a)) (g - a),
//   a' = rho a + (1-rho) g;  u = g / (sqrt(s) + eps) or g / sqrt(s + eps), s = max(s, 0) if centered;
//   b' = u + mu b, u = b' (heavy ball) or u + mu b' (Nesterov);  d = -lr u
// hyper: rho, 1-rho, rho (1-rho), eps, mu, -lr. kMomentum: 0 none, 1 heavy ball, 2 Nesterov.
template <bool kStep, bool kCentered, bool kInSqrt, int kMomentum>
void rmsprop_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float rho = h[0], orho = h[1], rho_orho = h[2], eps = h[3], mu = h[4], nlr = h[5];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict v = leaf.m;
  float* __restrict a = leaf.v;
  float* __restrict b = kCentered ? leaf.w : leaf.v;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    const float gi = g[i], vo = v[i];
    const float vi = rho * vo + (orho * gi) * gi;
    float s = vi;
    if (kCentered) {
      const float ao = a[i], d = gi - ao;
      s = rho * (vo - ao * ao) + (rho_orho * d) * d;
      a[i] = rho * ao + orho * gi;
    }
    v[i] = vi;
    if (kCentered) s = nan_max(s, 0.0f);
    float u = gi / (kInSqrt ? std::sqrt(s + eps) : std::sqrt(s) + eps);
    if (kMomentum) {
      const float bi = u + mu * b[i];
      b[i] = bi;
      u = kMomentum == 2 ? u + mu * bi : bi;
    }
    emit<kStep>(out, p, i, nlr * u);
  }
}

template <bool kStep, bool kCentered, bool kInSqrt>
Loop rmsprop_pick(int momentum) {
  return momentum == 0 ? rmsprop_loop<kStep, kCentered, kInSqrt, 0>
                       : (momentum == 1 ? rmsprop_loop<kStep, kCentered, kInSqrt, 1>
                                        : rmsprop_loop<kStep, kCentered, kInSqrt, 2>);
}

ffi::Error rmsprop(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> decay,
                   ffi::RemainingArgs args, ffi::RemainingRets rets, bool centered, bool eps_in_sqrt,
                   int64_t momentum, bool step) {
  if (momentum < 0 || momentum > 2) return ffi::Error::InvalidArgument("fused rmsprop: momentum 0, 1 or 2");
  using Pick = Loop (*)(int);
  const Pick picks[2][2][2] = {  // [step][centered][eps_in_sqrt]
      {{rmsprop_pick<false, false, false>, rmsprop_pick<false, false, true>},
       {rmsprop_pick<false, true, false>, rmsprop_pick<false, true, true>}},
      {{rmsprop_pick<true, false, false>, rmsprop_pick<true, false, true>},
       {rmsprop_pick<true, true, false>, rmsprop_pick<true, true, true>}}};
  const Loop loop = picks[step][centered][eps_in_sqrt](static_cast<int>(momentum));
  const int n_state = 1 + centered + (momentum != 0);
  return one_pass<6>("fused rmsprop", pool, hyper, decay, args, rets, n_state, step, loop, loop);
}

// Rprop (scale_by_rprop, scale_by_learning_rate), on zeta (step sizes) and the previous gradient q:
//   zeta = clip(zeta * (eta+ if g q > 0, eta- if g q < 0, else 1), zeta_min, zeta_max);
//   g = 0 where g q < 0 (the "torch" form);  q = g;  d = -lr zeta sign(g)
template <bool kStep, bool kTorchForm>
void rprop_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float up = h[0], down = h[1], low = h[2], high = h[3], nlr = h[4];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict zeta = leaf.m;
  float* __restrict prev = leaf.v;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    float gi = g[i];
    const float q = prev[i];
    const bool agree = (gi > 0.0f && q > 0.0f) || (gi < 0.0f && q < 0.0f);
    const bool disagree = (gi > 0.0f && q < 0.0f) || (gi < 0.0f && q > 0.0f);
    const float scaled = zeta[i] * (agree ? up : (disagree ? down : 1.0f));
    const float z = scaled < low ? low : (scaled > high ? high : scaled);
    if (kTorchForm && disagree) gi = 0.0f;
    zeta[i] = z;
    prev[i] = gi;
    emit<kStep>(out, p, i, nlr * (z * sign(gi)));
  }
}

ffi::Error rprop(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> decay,
                 ffi::RemainingArgs args, ffi::RemainingRets rets, bool torch_form, bool step) {
  const Loop loops[2][2] = {{rprop_loop<false, false>, rprop_loop<false, true>},
                            {rprop_loop<true, false>, rprop_loop<true, true>}};
  const Loop loop = loops[step][torch_form];
  return one_pass<5>("fused rprop", pool, hyper, decay, args, rets, 2, step, loop, loop);
}

// SGD (add_decayed_weights, trace, scale_by_learning_rate):
//   g = g + lambda p;  m = g + mu m;  u = m (heavy ball) or g + mu m (Nesterov);  d = -lr u
template <bool kStep, bool kDecay, bool kMomentum, bool kNesterov>
void sgd_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float mu = h[0], nlr = h[1], lam = leaf.decay;
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict out = leaf.out;
  for (int64_t i = lo; i < hi; ++i) {
    float gi = g[i];
    if (kDecay) gi = gi + lam * p[i];
    float u = gi;
    if (kMomentum) {
      const float mi = gi + mu * m[i];
      m[i] = mi;
      u = kNesterov ? gi + mu * mi : mi;
    }
    emit<kStep>(out, p, i, nlr * u);
  }
}

template <bool kStep, bool kMomentum, bool kNesterov>
ffi::Error sgd_pass(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& hyper, const ffi::Buffer<ffi::F32>& decay,
                    const ffi::RemainingArgs& args, const ffi::RemainingRets& rets) {
  return one_pass<2>("fused sgd", pool, hyper, decay, args, rets, kMomentum ? 1 : 0, kStep,
                     sgd_loop<kStep, false, kMomentum, kNesterov>, sgd_loop<kStep, true, kMomentum, kNesterov>);
}

ffi::Error sgd(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> decay,
               ffi::RemainingArgs args, ffi::RemainingRets rets, bool momentum, bool nesterov, bool step) {
  using Pass = ffi::Error (*)(ffi::ThreadPool&, const ffi::Buffer<ffi::F32>&, const ffi::Buffer<ffi::F32>&,
                              const ffi::RemainingArgs&, const ffi::RemainingRets&);
  const Pass passes[2][2][2] = {
      {{sgd_pass<false, false, false>, sgd_pass<false, false, true>},
       {sgd_pass<false, true, false>, sgd_pass<false, true, true>}},
      {{sgd_pass<true, false, false>, sgd_pass<true, false, true>},
       {sgd_pass<true, true, false>, sgd_pass<true, true, true>}},
  };
  return passes[step][momentum][nesterov && momentum](pool, hyper, decay, args, rets);
}

// Adafactor (scale_by_factored_rms, [clip_by_block_rms], [scale_by_param_block_rms],
// [scale_by_ema], scale_by_relative_step or scale_by_learning_rate). A leaf keeps the full
// moment V, or (factored) is a batch of rows x cols matrices with row and column means R, C:
//   1. G2 = G^2 + eps1;  full: V = beta V + (1-beta) G2 and the sum of U^2 = G^2 / V;
//      factored: the row sums and (per chunk of rows) column sums of G2;  with a parameter
//      scale, the sum of X^2;
//   then, per matrix: R = beta R + (1-beta) mean_cols(G2), C = beta C + (1-beta) mean_rows(G2),
//      a_i = 1/sqrt(R_i / mean(R)), b_j = 1/sqrt(C_j);
//   2. factored, with clipping: U = (G a_i) b_j and the sum of U^2;
//   3. U = U / max(1, RMS(U) / d);  U = U max(eps2, RMS(X));  [M = b1 M + (1-b1) U; U = M];
//      d = -rho U.
// hyper: beta, 1-beta, eps1, d (0: no clipping), eps2 (0: no parameter scale), b1, 1-b1, -rho.
// decay: per leaf 1 if factored, else 0. State operands, leaf by leaf: R, C (factored) or V;
// then, with momentum, each leaf's M.
struct Factors {  // what a leaf needs besides its Leaf
  bool factored = false;
  int64_t rows = 1, cols = 1;  // factored: each matrix's shape
  float* r = nullptr;          // factored: the state's row means (batch x rows)
  float* c = nullptr;          // and column means (batch x cols)
  std::vector<double> row_sum;  // factored: sum over cols of G2, per row (pass 1)
  std::vector<double> col_sum;  // factored: sum over rows of G2, per column (pass 1, chunks added in order)
  std::vector<float> a, b;      // factored: the row and column factors
  double u_sum = 0.0, x_sum = 0.0;
  float clip = 1.0f, scale = 1.0f;  // 1 / max(1, RMS(U)/d) is applied as a division by clip
};

struct Span {  // a chunk: elements [lo, hi) of a leaf; factored: whole rows of one matrix
  int64_t leaf, lo, hi;
  int64_t cols_at;  // factored: where the chunk's column sums start in the shared buffer
};

// The chunks: kChunk elements, or for a factored leaf at least kChunk elements' worth of rows
// and at most 64 chunks per matrix (which bounds the column-sum buffer), within a matrix.
std::vector<Span> adafactor_spans(const std::vector<Leaf>& leaves, const std::vector<Factors>& f, int64_t& cols_total) {
  std::vector<Span> spans;
  cols_total = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(leaves.size()); ++i) {
    const int64_t n = leaves[i].n;
    if (!f[i].factored) {
      for (int64_t b = 0; b < n; b += kChunk) spans.push_back({i, b, std::min(b + kChunk, n), -1});
      continue;
    }
    const int64_t rows = f[i].rows, cols = f[i].cols, size = rows * cols;
    const int64_t per = std::min(rows, std::max((kChunk + cols - 1) / cols, (rows + 63) / 64));
    for (int64_t at = 0; at < n; at += size)
      for (int64_t r0 = 0; r0 < rows; r0 += per) {
        spans.push_back({i, at + r0 * cols, at + std::min(rows, r0 + per) * cols, cols_total});
        cols_total += cols;
      }
  }
  return spans;
}

// The per-matrix factors from the row and column sums; R and C updated in place.
void finish_factors(Factors& f, int64_t n, float beta, float obeta) {
  const int64_t batch = n / (f.rows * f.cols);
  f.a.resize(batch * f.rows);
  f.b.resize(batch * f.cols);
  for (int64_t j = 0; j < batch * f.cols; ++j) {
    const float cc = beta * f.c[j] + obeta * static_cast<float>(f.col_sum[j] / f.rows);
    f.c[j] = cc;
    f.b[j] = 1.0f / std::sqrt(cc);
  }
  for (int64_t k = 0; k < batch; ++k) {
    double total = 0.0;
    for (int64_t i = k * f.rows; i < (k + 1) * f.rows; ++i) {
      const float rr = beta * f.r[i] + obeta * static_cast<float>(f.row_sum[i] / f.cols);
      f.r[i] = rr;
      total += rr;
    }
    const float mean = static_cast<float>(total / f.rows);
    for (int64_t i = k * f.rows; i < (k + 1) * f.rows; ++i) f.a[i] = 1.0f / std::sqrt(f.r[i] / mean);
  }
}

// Pass 3 over one span.
template <bool kStep, bool kFactored, bool kMomentum>
void adafactor_apply(const Leaf& leaf, const Factors& f, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[5], ob1 = h[6], nlr = h[7], clip = f.clip, scale = f.scale;
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  const float* __restrict v = leaf.v;
  float* __restrict m = leaf.m;
  float* __restrict out = leaf.out;
  auto finish = [&](int64_t e, float u) {
    u = u / clip * scale;
    if (kMomentum) {
      const float mi = b1 * m[e] + ob1 * u;
      m[e] = mi;
      u = mi;
    }
    emit<kStep>(out, p, e, nlr * u);
  };
  if (!kFactored) {
    for (int64_t e = lo; e < hi; ++e) finish(e, g[e] * (1.0f / std::sqrt(v[e])));
    return;
  }
  for (int64_t row = lo / f.cols; row < hi / f.cols; ++row) {
    const float ai = f.a[row];
    const float* __restrict bj = f.b.data() + (row / f.rows) * f.cols;
    const int64_t base = row * f.cols;
    for (int64_t j = 0; j < f.cols; ++j) finish(base + j, (g[base + j] * ai) * bj[j]);
  }
}

using AdafactorLoop = void (*)(const Leaf&, const Factors&, int64_t, int64_t, const float*);

template <bool kStep, bool kMomentum>
AdafactorLoop adafactor_loop(bool factored) {
  return factored ? adafactor_apply<kStep, true, kMomentum> : adafactor_apply<kStep, false, kMomentum>;
}

ffi::Error adafactor(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> info,
                     ffi::RemainingArgs args, ffi::RemainingRets rets, bool momentum, bool step) {
  if (hyper.element_count() != 8) return ffi::Error::InvalidArgument("fused adafactor: 8 scalars expected");
  const size_t L = info.element_count();
  size_t n_state = 0;
  for (size_t i = 0; i < L; ++i) n_state += info.typed_data()[i] != 0.0f ? 2 : 1;
  const size_t n_mu = momentum ? L : 0;
  if (args.size() != 2 * L + n_state + n_mu || rets.size() != L + n_state + n_mu)
    return ffi::Error::InvalidArgument("fused adafactor: wrong number of buffers");
  auto leaves = std::make_shared<std::vector<Leaf>>(L);
  auto f = std::make_shared<std::vector<Factors>>(L);
  for (size_t i = 0, k = 0; i < L; ++i) {
    Leaf& leaf = (*leaves)[i];
    Factors& fi = (*f)[i];
    if (auto e = leaf_io(args, rets, L, i, step, leaf); e.failure()) return e;
    fi.factored = info.typed_data()[i] != 0.0f;
    if (fi.factored) {
      const auto dims = args.get<ffi::AnyBuffer>(L + i)->dimensions();
      if (dims.size() < 2) return ffi::Error::InvalidArgument("fused adafactor: a factored leaf needs 2 dims");
      fi.rows = dims[dims.size() - 2], fi.cols = dims[dims.size() - 1];
      auto r = state_buffer(args, rets, 2 * L + k, L + k, leaf.n / fi.cols);
      auto c = state_buffer(args, rets, 2 * L + k + 1, L + k + 1, leaf.n / fi.rows);
      if (!r.has_value()) return r.error();
      if (!c.has_value()) return c.error();
      fi.r = *r, fi.c = *c, k += 2;
      fi.row_sum.assign(leaf.n / fi.cols, 0.0);
      fi.col_sum.assign(leaf.n / fi.rows, 0.0);
    } else {
      auto v = state_buffer(args, rets, 2 * L + k, L + k, leaf.n);
      if (!v.has_value()) return v.error();
      leaf.v = *v, k += 1;
    }
    if (momentum) {
      auto m = state_buffer(args, rets, 2 * L + n_state + i, L + n_state + i, leaf.n);
      if (!m.has_value()) return m.error();
      leaf.m = *m;
    }
  }
  float h[8];
  std::copy(hyper.typed_data(), hyper.typed_data() + 8, h);
  const float beta = h[0], obeta = h[1], eps1 = h[2], d = h[3], eps2 = h[4];
  int64_t cols_total = 0;
  auto spans = std::make_shared<std::vector<Span>>(adafactor_spans(*leaves, *f, cols_total));
  const int64_t S = static_cast<int64_t>(spans->size());
  auto col_part = std::make_shared<std::vector<float>>(cols_total, 0.0f);
  auto u_part = std::make_shared<std::vector<double>>(S, 0.0), x_part = std::make_shared<std::vector<double>>(S, 0.0);

  parallel_for(pool, S, [=](int64_t j) {  // pass 1
    const Span& s = (*spans)[j];
    const Leaf& leaf = (*leaves)[s.leaf];
    Factors& fi = (*f)[s.leaf];
    const float* __restrict x = leaf.p;
    const float* __restrict g = leaf.g;
    const bool scaled = eps2 != 0.0f;  // the sum of X^2 in the same sweep (one read of each buffer)
    if (!fi.factored) {
      float* __restrict v = leaf.v;
      auto u2 = [=](int64_t e) {
        const float g2 = g[e] * g[e];
        const float vi = beta * v[e] + obeta * (g2 + eps1);
        v[e] = vi;
        return std::array<float, 2>{g2 / vi, scaled ? x[e] * x[e] : 0.0f};  // U^2 without U's root
      };
      const auto sums = scaled ? lane_sums<2>(s.lo, s.hi, u2) : Sums<2>{lane_sum(s.lo, s.hi, [&](int64_t e) {
        return u2(e)[0];
      }), 0.0};
      (*u_part)[j] = sums[0], (*x_part)[j] = sums[1];
      return;
    }
    float* __restrict cols = col_part->data() + s.cols_at;
    for (int64_t row = s.lo / fi.cols; row < s.hi / fi.cols; ++row) {
      const float* __restrict gr = g + row * fi.cols;
      const float* __restrict xr = x + row * fi.cols;
      auto g2x2 = [=](int64_t c) {
        const float g2 = gr[c] * gr[c] + eps1;
        cols[c] += g2;
        return std::array<float, 2>{g2, scaled ? xr[c] * xr[c] : 0.0f};
      };
      const auto sums = scaled ? lane_sums<2>(0, fi.cols, g2x2) : Sums<2>{lane_sum(0, fi.cols, [&](int64_t c) {
        return g2x2(c)[0];
      }), 0.0};
      fi.row_sum[row] = sums[0];
      (*x_part)[j] += sums[1];
    }
  });

  for (int64_t j = 0; j < S; ++j) {  // the column sums of each matrix, its chunks in order
    const Span& s = (*spans)[j];
    Factors& fi = (*f)[s.leaf];
    fi.x_sum += (*x_part)[j], fi.u_sum += (*u_part)[j];
    if (!fi.factored) continue;
    double* sums = fi.col_sum.data() + (s.lo / (fi.rows * fi.cols)) * fi.cols;
    for (int64_t c = 0; c < fi.cols; ++c) sums[c] += (*col_part)[s.cols_at + c];
  }
  for (size_t i = 0; i < L; ++i)
    if ((*f)[i].factored) finish_factors((*f)[i], (*leaves)[i].n, beta, obeta);

  if (d != 0.0f) {
    parallel_for(pool, S, [=](int64_t j) {  // pass 2: the sums of U^2 of factored leaves
      const Span& s = (*spans)[j];
      const Factors& fi = (*f)[s.leaf];
      if (!fi.factored) return;
      const float* __restrict g = (*leaves)[s.leaf].g;
      double total = 0.0;
      for (int64_t row = s.lo / fi.cols; row < s.hi / fi.cols; ++row) {
        const float ai = fi.a[row];
        const float* __restrict gr = g + row * fi.cols;
        const float* __restrict bj = fi.b.data() + (row / fi.rows) * fi.cols;
        total += lane_sum(0, fi.cols, [=](int64_t c) {
          const float u = (gr[c] * ai) * bj[c];
          return u * u;
        });
      }
      (*u_part)[j] = total;
    });
    for (int64_t j = 0; j < S; ++j)
      if ((*f)[(*spans)[j].leaf].factored) (*f)[(*spans)[j].leaf].u_sum += (*u_part)[j];
  }
  for (size_t i = 0; i < L; ++i) {
    Factors& fi = (*f)[i];
    const double n = static_cast<double>((*leaves)[i].n);
    if (d != 0.0f) fi.clip = std::max(1.0f, static_cast<float>(std::sqrt(fi.u_sum / n)) / d);
    if (eps2 != 0.0f) fi.scale = std::max(eps2, static_cast<float>(std::sqrt(fi.x_sum / n)));
  }

  const AdafactorLoop full = step ? (momentum ? adafactor_loop<true, true>(false) : adafactor_loop<true, false>(false))
                                  : (momentum ? adafactor_loop<false, true>(false) : adafactor_loop<false, false>(false));
  const AdafactorLoop factored = step ? (momentum ? adafactor_loop<true, true>(true) : adafactor_loop<true, false>(true))
                                      : (momentum ? adafactor_loop<false, true>(true) : adafactor_loop<false, false>(true));
  parallel_for(pool, S, [=](int64_t j) {  // pass 3
    const Span& s = (*spans)[j];
    const Factors& fi = (*f)[s.leaf];
    (fi.factored ? factored : full)((*leaves)[s.leaf], fi, s.lo, s.hi, h);
  });
  return ffi::Error::Success();
}

// SM3 (scale_by_sm3, [scale_by_ema], scale_by_learning_rate). A leaf of rank k >= 2 is rows x cols
// (cols its last dim, rows the others) with one accumulator per index of each dim, kept end to
// end (acc_0, ..., acc_{k-1}); nu(i) is the min of the accumulators of i's covers:
//   SM3-I:  acc_d = acc_d + max over each cover of g^2 (pass 1), then nu = min(acc);
//   SM3-II: nu = min(acc) + g^2, then acc_d = max over each cover of nu (0 over none);
//   u = g / sqrt(nu + eps) where nu > 0, else 0;  [m = b m + (1-b) u; u = m];  d = -lr u.
// A vector's covers are its entries and a scalar is one cover (AdaGrad, element by element).
// The maxima are taken per chunk of whole rows and combined after the pass (a max is exact in
// any order). hyper: eps, b, 1-b, -lr. State operands: L accumulators, then with momentum L m.
struct Covers {  // a leaf's accumulators and its shape as rows x cols
  float* acc = nullptr;
  std::vector<int64_t> dims;  // rank >= 2: the dims; else empty (element by element)
  int64_t cols = 1, total = 1;  // total: sum(dims), the number of accumulators
  std::vector<uint32_t> maxima;  // per chunk of the leaf: its total running maxima (max_key)
};

struct Sm3Span {  // a chunk: elements [lo, hi) of a leaf (whole rows for rank >= 2), its maxima slot
  int64_t leaf, lo, hi, slot;
};

// visit(r) for the accumulator r (in acc's layout) of each of the row's prefix indices
// (i_0, ..., i_{k-2}), the row's dims but the last.
template <typename Visit>
inline void for_prefix(const Covers& c, int64_t row, Visit visit) {
  int64_t offset = 0, rest = row, stride = 1;
  const size_t k = c.dims.size();
  for (size_t d = 0; d + 1 < k; ++d) stride *= c.dims[d];
  for (size_t d = 0; d + 1 < k; ++d) {
    stride /= c.dims[d];
    visit(offset + rest / stride);
    rest %= stride, offset += c.dims[d];
  }
}

// min over d < k-1 of acc_d[i_d] for the row; +inf for k < 2.
inline float prefix_min(const Covers& c, int64_t row) {
  float low = INFINITY;
  for_prefix(c, row, [&](int64_t r) { low = nan_min(low, c.acc[r]); });
  return low;
}

// maxima[r] = max(maxima[r], key) for the row's prefix accumulators r.
inline void prefix_max(const Covers& c, uint32_t* maxima, int64_t row, uint32_t key) {
  for_prefix(c, row, [&](int64_t r) { maxima[r] = std::max(maxima[r], key); });
}

// x >= 0 or NaN as an integer key that orders like x, with every NaN above +inf: the max of the
// keys is jnp.max's (NaN if any is NaN), a reduction in integer lanes that vectorizes.
inline uint32_t max_key(float x) {
  uint32_t k;
  std::memcpy(&k, &x, sizeof k);
  return k & 0x7fffffffu;
}

inline float from_key(uint32_t k) {
  float x;
  std::memcpy(&x, &k, sizeof x);
  return x;
}

// The key of the max of 0 and term(e) (>= 0, or NaN) over [lo, hi), kLanes running maxima.
template <typename Term>
inline uint32_t lane_max(int64_t lo, int64_t hi, Term term) {
  uint32_t top[kLanes] = {};
  int64_t e = lo;
  for (; e + kLanes <= hi; e += kLanes)
    for (int k = 0; k < kLanes; ++k) top[k] = std::max(top[k], max_key(term(e + k)));
  uint32_t best = 0;
  for (int k = 0; k < kLanes; ++k) best = std::max(best, top[k]);
  for (; e < hi; ++e) best = std::max(best, max_key(term(e)));
  return best;
}

// One chunk's pass. kStats: SM3-I's pass 1 (the maxima of g^2, nothing written); else the update
// (SM3-II: with the maxima of nu).
template <bool kStep, bool kMomentum, bool kTwo, bool kStats>
void sm3_span(const Leaf& leaf, Covers& c, const Sm3Span& s, const float* h) {
  const float eps = h[0], b = h[1], ob = h[2], nlr = h[3];
  float* __restrict p = leaf.p;
  const float* __restrict g = leaf.g;
  float* __restrict m = leaf.m;
  float* __restrict out = leaf.out;
  auto apply = [=](int64_t e, float nu) {  // u = g / sqrt(nu + eps) (0 where nu is not > 0), momentum, step
    float u = nu > 0.0f ? g[e] * (1.0f / std::sqrt(nu + eps)) : 0.0f;
    if (kMomentum) {
      const float mi = b * m[e] + ob * u;
      m[e] = mi;
      u = mi;
    }
    emit<kStep>(out, p, e, nlr * u);
  };
  if (c.dims.empty()) {  // each cover one entry: nu = acc + g^2 = the new acc (both variants), in place
    if (kStats) return;
    float* __restrict acc = c.acc;
    for (int64_t e = s.lo; e < s.hi; ++e) {
      const float nu = acc[e] + g[e] * g[e];
      acc[e] = nu;
      apply(e, nu);
    }
    return;
  }
  const int64_t cols = c.cols, total = c.total;
  uint32_t* maxima = c.maxima.data() + s.slot * total;
  const float* __restrict last = c.acc + total - cols;
  uint32_t* __restrict last_max = maxima + total - cols;
  for (int64_t row = s.lo / cols; row < s.hi / cols; ++row) {
    const float low = prefix_min(c, row);
    const float* __restrict gr = g + row * cols;
    const int64_t at = row * cols;
    if (!kStats && !kTwo) {  // SM3-I's update: the accumulators are final
      for (int64_t j = 0; j < cols; ++j) apply(at + j, nan_min(low, last[j]));
      continue;
    }
    const uint32_t row_max = lane_max(0, cols, [=](int64_t j) {
      const float g2 = gr[j] * gr[j];
      const float x = kStats ? g2 : nan_min(low, last[j]) + g2;  // SM3-II: nu
      last_max[j] = std::max(last_max[j], max_key(x));
      if (!kStats) apply(at + j, x);
      return x;
    });
    prefix_max(c, maxima, row, row_max);
  }
}

ffi::Error sm3(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::Buffer<ffi::F32> info,
               ffi::RemainingArgs args, ffi::RemainingRets rets, bool two, bool momentum, bool step) {
  if (hyper.element_count() != 4) return ffi::Error::InvalidArgument("fused sm3: 4 scalars expected");
  const size_t L = info.element_count();
  const size_t n_state = momentum ? 2 : 1;
  if (args.size() != (2 + n_state) * L || rets.size() != (1 + n_state) * L)
    return ffi::Error::InvalidArgument("fused sm3: wrong number of buffers");
  auto leaves = std::make_shared<std::vector<Leaf>>(L);
  auto covers = std::make_shared<std::vector<Covers>>(L);
  auto spans = std::make_shared<std::vector<Sm3Span>>();
  for (size_t i = 0; i < L; ++i) {
    Leaf& leaf = (*leaves)[i];
    Covers& c = (*covers)[i];
    if (auto e = leaf_io(args, rets, L, i, step, leaf); e.failure()) return e;
    const auto dims = args.get<ffi::AnyBuffer>(L + i)->dimensions();
    if (dims.size() >= 2) {
      c.dims.assign(dims.begin(), dims.end()), c.cols = dims.back(), c.total = 0;
      for (int64_t d : dims) c.total += d;
    }
    auto acc = state_buffer(args, rets, 2 * L + i, L + i, c.dims.empty() ? leaf.n : c.total);
    if (!acc.has_value()) return acc.error();
    c.acc = *acc;
    if (momentum) {
      auto m = state_buffer(args, rets, 3 * L + i, 2 * L + i, leaf.n);
      if (!m.has_value()) return m.error();
      leaf.m = *m;
    }
    if (c.dims.empty()) {
      for (int64_t b = 0; b < leaf.n; b += kChunk)
        spans->push_back({static_cast<int64_t>(i), b, std::min(b + kChunk, leaf.n), 0});
      continue;
    }
    const int64_t rows = leaf.n / c.cols;
    const int64_t per = std::min(rows, std::max((kChunk + c.cols - 1) / c.cols, (rows + 63) / 64));
    int64_t slot = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += per, ++slot)
      spans->push_back({static_cast<int64_t>(i), r0 * c.cols, std::min(rows, r0 + per) * c.cols, slot});
    c.maxima.assign(slot * c.total, 0u);
  }
  float h[4];
  std::copy(hyper.typed_data(), hyper.typed_data() + 4, h);
  using SpanLoop = void (*)(const Leaf&, Covers&, const Sm3Span&, const float*);
  auto run = [&](SpanLoop loop) {
    parallel_for(pool, static_cast<int64_t>(spans->size()), [=](int64_t j) {
      const Sm3Span& s = (*spans)[j];
      loop((*leaves)[s.leaf], (*covers)[s.leaf], s, h);
    });
  };
  // The accumulators from the chunks' maxima: SM3-I adds them, SM3-II takes them.
  auto combine = [&](bool add) {
    for (Covers& c : *covers) {
      if (c.dims.empty()) continue;
      const int64_t slots = static_cast<int64_t>(c.maxima.size()) / c.total;
      for (int64_t r = 0; r < c.total; ++r) {
        uint32_t key = 0;
        for (int64_t k = 0; k < slots; ++k) key = std::max(key, c.maxima[k * c.total + r]);
        c.acc[r] = add ? c.acc[r] + from_key(key) : from_key(key);
      }
    }
  };
  const SpanLoop loops[2][2][2] = {  // [step][momentum][two]
      {{sm3_span<false, false, false, false>, sm3_span<false, false, true, false>},
       {sm3_span<false, true, false, false>, sm3_span<false, true, true, false>}},
      {{sm3_span<true, false, false, false>, sm3_span<true, false, true, false>},
       {sm3_span<true, true, false, false>, sm3_span<true, true, true, false>}}};
  if (!two) {
    run(sm3_span<false, false, false, true>);  // pass 1: the maxima of g^2
    combine(true);
  }
  run(loops[step][momentum][two]);
  if (two) combine(false);
  return ffi::Error::Success();
}

}  // namespace

#define OPTIMIZERS_BIND                                                                  \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>() \
      .RemainingArgs().RemainingRets()

XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adam, adam, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adafactor, adafactor,
                              OPTIMIZERS_BIND.Attr<bool>("momentum").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_amsgrad, amsgrad, OPTIMIZERS_BIND.Attr<bool>("raw").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adamax, adamax, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_nadam, nadam, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_radam, radam,
                              OPTIMIZERS_BIND.Attr<bool>("eps_on_raw_sqrt").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_lamb, lamb, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_lars, lars, OPTIMIZERS_BIND.Attr<bool>("nesterov").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_lion, lion, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adagrad, adagrad, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adax, adax, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_funnelled_sgdm, funnelled_sgdm, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_amos, amos, OPTIMIZERS_BIND.Attr<bool>("momentum").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adadelta, adadelta, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_novograd, novograd, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_rmsprop, rmsprop,
                              OPTIMIZERS_BIND.Attr<bool>("centered").Attr<bool>("eps_in_sqrt").Attr<int64_t>("momentum")
                                  .Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_sm3, sm3,
                              OPTIMIZERS_BIND.Attr<bool>("two").Attr<bool>("momentum").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_rprop, rprop, OPTIMIZERS_BIND.Attr<bool>("torch_form").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_sgd, sgd,
                              OPTIMIZERS_BIND.Attr<bool>("momentum").Attr<bool>("nesterov").Attr<bool>("step"));
