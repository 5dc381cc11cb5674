// The trust-ratio kernels (../_trust_ratio.py): LAMB and LARS, two passes each (the per-leaf
// norms, then the update). See common.h.

#include "common.h"

namespace {

// Pass 1 of a trust-ratio kernel: per leaf two sums of squares, sums(leaf, lo, hi) over each
// chunk (in double, per chunk, added in chunk order), and the leaf's norms from them.
template <typename SumsOf>
std::vector<std::pair<float, float>> leaf_norms(ffi::ThreadPool& pool, const Leaves& leaves, SumsOf sums) {
  std::vector<int64_t> first(leaves->size() + 1, 0);  // leaf i's chunks are first[i] .. first[i+1]-1
  for (size_t i = 0; i < leaves->size(); ++i) first[i + 1] = first[i] + ((*leaves)[i].n + kChunk - 1) / kChunk;
  auto partial = std::make_shared<std::vector<double>>(2 * first.back(), 0.0);  // per chunk: both sums
  parallel_chunks(pool, leaves, [partial, sums](const Leaf& leaf, int64_t lo, int64_t hi, int64_t j) {
    const Sums<2> both = sums(leaf, lo, hi);
    (*partial)[2 * j] = both[0], (*partial)[2 * j + 1] = both[1];
  });
  std::vector<std::pair<float, float>> norms(leaves->size());
  for (size_t i = 0; i < leaves->size(); ++i) {
    double a = 0.0, b = 0.0;
    for (int64_t j = first[i]; j < first[i + 1]; ++j) a += (*partial)[2 * j], b += (*partial)[2 * j + 1];
    norms[i] = {static_cast<float>(std::sqrt(a)), static_cast<float>(std::sqrt(b))};
  }
  return norms;
}

// Pass 2: loop over every chunk, with the leaves' trust ratios set.
template <size_t kScalars>
void apply(ffi::ThreadPool& pool, const Leaves& leaves, Loop loop, const std::array<float, kScalars>& h) {
  parallel_chunks(pool, leaves, [h, loop](const Leaf& leaf, int64_t lo, int64_t hi, int64_t) {
    loop(leaf, lo, hi, h.data());
  });
}

// LAMB (scale_by_adam, add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate), two passes:
//   1. m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  r = m / c1 / (sqrt(v / c2) + eps) + lambda p,
//      and per leaf the sums of r^2 and p^2 (in double, per chunk, added in chunk order);
//   2. ratio = coef phi(|p|) / |r| (1 where either norm is 0 or the leaf is masked out),
//      d = -lr (ratio r), with r recomputed from the new m, v and the unchanged p.
// hyper: b1, 1-b1, b2, 1-b2, c1, c2, eps, coef, min |p|, max |p|, -lr; info: L decays, then L
// trust-ratio flags (1 or 0).
template <bool kStep>
void lamb_apply(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float c1 = h[4], c2 = h[5], eps = h[6], nlr = h[10], lam = leaf.decay, ratio = leaf.ratio;
  for_elements<kStep, 2, false>(leaf, lo, hi, [=](float, float pi, float* s) {
    const float r = s[0] / c1 / (std::sqrt(s[1] / c2) + eps) + lam * pi;
    return nlr * (ratio * r);
  });
}

ffi::Error lamb(KERNEL_OPERANDS, bool step) {
  auto h = scalars<11>("fused lamb", hyper);
  if (!h.has_value()) return h.error();
  const size_t L = info.element_count() / 2;
  auto leaves = collect({pool, hyper, info, args, rets}, 2, step, L);
  if (!leaves.has_value()) return leaves.error();
  const auto norms = leaf_norms(pool, *leaves, [h = *h](const Leaf& leaf, int64_t lo, int64_t hi) {
    const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], c1 = h[4], c2 = h[5], eps = h[6];
    const float lam = leaf.decay;
    const float* __restrict p = leaf.p;
    const float* __restrict g = leaf.g;
    float* __restrict m = leaf.m;
    float* __restrict v = leaf.v;
    return lane_sums<2>(lo, hi, [&](int64_t e) {
      const auto [mi, vi] = adam_moments(m[e], v[e], g[e], b1, ob1, b2, ob2);
      const float r = mi / c1 / (std::sqrt(vi / c2) + eps) + lam * p[e];
      return std::array<float, 2>{r * r, p[e] * p[e]};
    });
  });
  const float* on = info.typed_data() + L;
  for (size_t i = 0; i < L; ++i) {
    const auto [r_norm, raw_p_norm] = norms[i];
    const float p_norm = std::min(std::max(raw_p_norm, (*h)[8]), (*h)[9]);
    (**leaves)[i].ratio = (on[i] != 0.0f && r_norm != 0.0f && p_norm != 0.0f) ? (*h)[7] * p_norm / r_norm : 1.0f;
  }
  apply(pool, *leaves, step ? lamb_apply<true> : lamb_apply<false>, *h);
  return ffi::Error::Success();
}

// LARS (scale_by_lars, scale_by_learning_rate, trace), two passes:
//   1. per leaf |g| and |w|;
//   2. ratio = coef |w| / (|g| + beta |w| + eps) (1 where |w| = 0, the denominator is 0 or the
//      leaf is masked out);  u = -lr (ratio (g + beta w));  m = u + mu m;  w += m (or u + mu m).
// hyper: coef, eps, mu, -lr; info: L betas (0 where not decayed), then L trust-ratio flags.
template <bool kStep, bool kNesterov>
void lars_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float mu = h[2], nlr = h[3], beta = leaf.decay, ratio = leaf.ratio;
  for_elements<kStep, 1>(leaf, lo, hi, [=](float gi, float wi, float* s) {
    const float u = nlr * (ratio * (gi + beta * wi));
    const float mi = u + mu * s[0];
    s[0] = mi;
    return kNesterov ? u + mu * mi : mi;
  });
}

ffi::Error lars(KERNEL_OPERANDS, bool nesterov, bool step) {
  auto h = scalars<4>("fused lars", hyper);
  if (!h.has_value()) return h.error();
  const size_t L = info.element_count() / 2;
  auto leaves = collect({pool, hyper, info, args, rets}, 1, step, L);
  if (!leaves.has_value()) return leaves.error();
  const auto norms = leaf_norms(pool, *leaves, [](const Leaf& leaf, int64_t lo, int64_t hi) {
    const float* __restrict g = leaf.g;
    const float* __restrict w = leaf.p;
    return lane_sums<2>(lo, hi, [g, w](int64_t e) { return std::array<float, 2>{g[e] * g[e], w[e] * w[e]}; });
  });
  const float* on = info.typed_data() + L;
  for (size_t i = 0; i < L; ++i) {
    Leaf& leaf = (**leaves)[i];
    const auto [g_norm, w_norm] = norms[i];
    const float den = g_norm + leaf.decay * w_norm;
    leaf.ratio = (on[i] != 0.0f && w_norm != 0.0f && den != 0.0f) ? (*h)[0] * w_norm / (den + (*h)[1]) : 1.0f;
  }
  const Loop loop = pick([](auto... k) -> Loop { return lars_loop<k...>; }, step, nesterov);
  apply(pool, *leaves, loop, *h);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_lamb, lamb, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_lars, lars, OPTIMIZERS_BIND.Attr<bool>("nesterov").Attr<bool>("step"));
