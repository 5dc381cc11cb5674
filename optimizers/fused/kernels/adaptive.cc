// The kernels of per-element step sizes from a running second moment: AdaGrad (../_adagrad.py),
// Adadelta (../_adadelta.py), RMSProp (../_rmsprop.py) and Amos (../_amos.py). See common.h.

#include "quantized.h"

namespace {

// AdaGrad (scale_by_rss, scale_by_learning_rate):  v = v + g g;  d = -lr g / (sqrt(v) + eps)
template <bool kStep, typename L>
void adagrad_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float eps = h[0], nlr = h[1];
  for_elements<kStep, 1>(leaf, lo, hi, [=](float gi, float, float* s) {
    const float vi = s[0] + gi * gi;
    s[0] = vi;
    return nlr * (gi / (std::sqrt(vi) + eps));
  });
}

ONE_PASS_KERNEL(adagrad, 2, 1)
CODED_KERNEL(adagrad, 2, 1)

// Adadelta (scale_by_adadelta, scale_by_learning_rate):
//   v = rho v + (1-rho) g g;  d = sqrt((x + eps) / (v + eps)) g;  x = rho x + (1-rho) d d;  -lr d
template <bool kStep, typename L>
void adadelta_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float rho = h[0], orho = h[1], eps = h[2], nlr = h[3];
  for_elements<kStep, 2>(leaf, lo, hi, [=](float gi, float, float* s) {
    const float vi = rho * s[0] + (orho * gi) * gi;
    const float xi = s[1];
    const float d = std::sqrt((xi + eps) / (vi + eps)) * gi;
    s[0] = vi;
    s[1] = rho * xi + (orho * d) * d;
    return nlr * d;
  });
}

ONE_PASS_KERNEL(adadelta, 4, 2)
CODED_KERNEL(adadelta, 4, 2)

// RMSProp (scale_by_rms, [trace], scale_by_learning_rate), on v, [the mean a (centered)], [the momentum b]:
//   v' = rho v + ((1-rho) g) g;  s = v' or (centered) rho (v - a a) + ((rho (1-rho)) (g - a)) (g - a),
//   a' = rho a + (1-rho) g;  u = g / (sqrt(s) + eps) or g / sqrt(s + eps), s = max(s, 0) if centered;
//   b' = u + mu b, u = b' (heavy ball) or u + mu b' (Nesterov);  d = -lr u
// hyper: rho, 1-rho, rho (1-rho), eps, mu, -lr. momentum: 0 none, 1 heavy ball, 2 Nesterov.
template <bool kStep, bool kCentered, bool kInSqrt, bool kMomentum, bool kNesterov, typename L>
void rmsprop_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float rho = h[0], orho = h[1], rho_orho = h[2], eps = h[3], mu = h[4], nlr = h[5];
  constexpr int kB = kCentered ? 2 : 1;  // where the momentum is
  for_elements<kStep, 1 + kCentered + kMomentum>(leaf, lo, hi, [=](float gi, float, float* st) {
    const float vo = st[0];
    const float vi = rho * vo + (orho * gi) * gi;
    float s = vi;
    if (kCentered) {
      const float ao = st[1], d = gi - ao;
      s = rho * (vo - ao * ao) + (rho_orho * d) * d;
      st[1] = rho * ao + orho * gi;
    }
    st[0] = vi;
    if (kCentered) s = nan_max(s, 0.0f);
    float u = gi / (kInSqrt ? std::sqrt(s + eps) : std::sqrt(s) + eps);
    if (kMomentum) {
      const float bi = u + mu * st[kB];
      st[kB] = bi;
      u = kNesterov ? u + mu * bi : bi;
    }
    return nlr * u;
  });
}

ffi::Error rmsprop(KERNEL_OPERANDS, bool centered, bool eps_in_sqrt, int64_t momentum, bool step) {
  if (momentum < 0 || momentum > 2) return invalid("fused rmsprop: momentum 0, 1 or 2");
  const Loop loop = pick([](auto... k) -> Loop { return rmsprop_loop<k...>; }, step, centered, eps_in_sqrt,
                         momentum != 0, momentum == 2);
  const int n_state = 1 + centered + (momentum != 0);
  return one_pass<6>({pool, hyper, info, args, rets}, "fused rmsprop", n_state, step, loop);
}

ffi::Error rmsprop_q8(KERNEL_OPERANDS, bool centered, bool eps_in_sqrt, int64_t momentum, bool step) {
  if (momentum < 0 || momentum > 2) return invalid("fused 8-bit rmsprop: momentum 0, 1 or 2");
  const QLoop loop = pick([](auto... k) -> QLoop { return rmsprop_loop<k...>; }, step, centered, eps_in_sqrt,
                          momentum != 0, momentum == 2);
  const int n_state = 1 + centered + (momentum != 0);
  return coded_pass<6>({pool, hyper, info, args, rets}, "fused 8-bit rmsprop", n_state, step, loop);
}

// Amos, element granularity (scale_by_amos, scale_by_ema or identity, scale_by_learning_rate):
//   v = beta v + (1-beta) g^2;  r = (1-beta^t) / max(v, eps);  c = (1 + s_c b)^(-1/2);
//   d = 1 / (1 + s_d b);  gx = c xi r g^2;  u = d (eta sqrt(r) g + 0.5 gx p);  b = b + xi gx (1 + b);
//   [m = mu m + (1-mu) u, u = m];  -lr u.  Per leaf: eta (decay), s_d = d_coef sqrt(xi eta) (ratio).
// info: L etas, then L s_d.
template <bool kStep, bool kMomentum>
void amos_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float beta = h[0], obeta = h[1], corr = h[2], eps = h[3], sc = h[4], xi = h[5], mu = h[6], omu = h[7];
  const float nlr = h[8], eta = leaf.decay, sd = leaf.ratio;
  for_elements<kStep, 2 + kMomentum>(leaf, lo, hi, [=](float gi, float pi, float* s) {  // s: v, b, [m]
    const float g2 = gi * gi, bi = s[1];
    const float vi = beta * s[0] + obeta * g2;
    s[0] = vi;
    const float r = corr / nan_max(vi, eps);
    const float c = 1.0f / std::sqrt(1.0f + sc * bi);
    const float d = 1.0f / (1.0f + sd * bi);
    const float gx = c * xi * r * g2;
    float u = d * (eta * std::sqrt(r) * gi + 0.5f * gx * pi);
    s[1] = bi + xi * gx * (1.0f + bi);
    if (kMomentum) {
      u = mu * s[2] + omu * u;
      s[2] = u;
    }
    return nlr * u;
  });
}

ffi::Error amos(KERNEL_OPERANDS, bool momentum, bool step) {
  auto h = scalars<9>("fused amos", hyper);
  if (!h.has_value()) return h.error();
  const size_t L = info.element_count() / 2;
  auto leaves = collect({pool, hyper, info, args, rets}, momentum ? 3 : 2, step, L);
  if (!leaves.has_value()) return leaves.error();
  for (size_t i = 0; i < L; ++i) (**leaves)[i].ratio = info.typed_data()[L + i];
  const Loop loop = pick([](auto... k) -> Loop { return amos_loop<k...>; }, step, momentum);
  parallel_chunks(pool, *leaves, [h = *h, loop](const Leaf& leaf, int64_t lo, int64_t hi, int64_t) {
    loop(leaf, lo, hi, h.data());
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adagrad, adagrad, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adadelta, adadelta, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_rmsprop, rmsprop,
                              OPTIMIZERS_BIND.Attr<bool>("centered").Attr<bool>("eps_in_sqrt").Attr<int64_t>("momentum")
                                  .Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adagrad_q8, adagrad_q8, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adadelta_q8, adadelta_q8, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_rmsprop_q8, rmsprop_q8,
                              OPTIMIZERS_BIND.Attr<bool>("centered").Attr<bool>("eps_in_sqrt").Attr<int64_t>("momentum")
                                  .Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_amos, amos, OPTIMIZERS_BIND.Attr<bool>("momentum").Attr<bool>("step"));
