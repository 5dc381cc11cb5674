// The Adam family's kernels: Adam and AdamW, AMSGrad, Adamax (../_adam.py), Nadam (../_nadam.py),
// RAdam (../_radam.py) and AdaX (../_adax.py). See common.h.

#include "quantized.h"

namespace {

// Adam and AdamW (scale_by_adam, add_decayed_weights, scale_by_learning_rate):
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  u = m / c1 / (sqrt(v / c2) + eps)
//   u = u + lambda p;  d = -lr u
template <bool kStep, bool kDecay, typename L>
void adam_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], c1 = h[4], c2 = h[5], eps = h[6], nlr = h[7];
  const float lam = leaf.decay;
  for_elements<kStep, 2>(leaf, lo, hi, [=](float gi, float pi, float* s) {
    const auto [mi, vi] = adam_moments(s[0], s[1], gi, b1, ob1, b2, ob2);
    float u = mi / c1 / (std::sqrt(vi / c2) + eps);
    if (kDecay) u = u + lam * pi;
    return nlr * u;
  });
}

ONE_PASS_DECAYED_KERNEL(adam, 8, 2)
CODED_DECAYED_KERNEL(adam, 8, 2)

// AMSGrad (scale_by_amsgrad, scale_by_learning_rate), with Adam's m and v:
//   corrected: w = max(w, v / c2), u = m / c1 / (sqrt(w) + eps);
//   raw:       w = max(w, v),      u = m / c1 / (sqrt(w / c2) + eps);   d = -lr u
template <bool kStep, bool kRaw, typename L>
void amsgrad_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], c1 = h[4], c2 = h[5], eps = h[6], nlr = h[7];
  for_elements<kStep, 3>(leaf, lo, hi, [=](float gi, float, float* s) {
    const auto [mi, vi] = adam_moments(s[0], s[1], gi, b1, ob1, b2, ob2);
    const float wi = nan_max(s[2], kRaw ? vi : vi / c2);
    s[2] = wi;
    return nlr * (mi / c1 / ((kRaw ? std::sqrt(wi / c2) : std::sqrt(wi)) + eps));
  });
}

ffi::Error amsgrad(KERNEL_OPERANDS, bool raw, bool step) {
  const Loop loop = pick([](auto... k) -> Loop { return amsgrad_loop<k...>; }, step, raw);
  return one_pass<8>({pool, hyper, info, args, rets}, "fused amsgrad", 3, step, loop);
}

ffi::Error amsgrad_q8(KERNEL_OPERANDS, bool raw, bool step) {
  const QLoop loop = pick([](auto... k) -> QLoop { return amsgrad_loop<k...>; }, step, raw);
  return coded_pass<8>({pool, hyper, info, args, rets}, "fused 8-bit amsgrad", 3, step, loop);
}

// Adamax (scale_by_adamax, scale_by_learning_rate):
//   m = b1 m + (1-b1) g;  v = max(b2 v, |g| + eps);  d = -lr m / (c1 v)
template <bool kStep, typename L>
void adamax_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], eps = h[3], c1 = h[4], nlr = h[5];
  for_elements<kStep, 2>(leaf, lo, hi, [=](float gi, float, float* s) {
    const float mi = b1 * s[0] + ob1 * gi;
    const float vi = nan_max(b2 * s[1], std::fabs(gi) + eps);
    s[0] = mi;
    s[1] = vi;
    return nlr * (mi / (c1 * vi));
  });
}

ONE_PASS_KERNEL(adamax, 6, 2)
CODED_KERNEL(adamax, 6, 2)

// Nadam (scale_by_nadam, scale_by_learning_rate), with Adam's m and v:
//   u = ((1-mu_t) g / (1-prod_t) + mu_{t+1} m / (1-prod_{t+1})) / (sqrt(v / c2) + eps);  d = -lr u
// hyper: b1, 1-b1, b2, 1-b2, c2, eps, 1-mu_t, 1-prod_t, mu_{t+1}, 1-prod_{t+1}, -lr.
template <bool kStep, typename L>
void nadam_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], c2 = h[4], eps = h[5];
  const float k1 = h[6], k2 = h[7], k3 = h[8], k4 = h[9], nlr = h[10];
  for_elements<kStep, 2>(leaf, lo, hi, [=](float gi, float, float* s) {
    const auto [mi, vi] = adam_moments(s[0], s[1], gi, b1, ob1, b2, ob2);
    const float nesterov = k1 * gi / k2 + k3 * mi / k4;
    return nlr * (nesterov / (std::sqrt(vi / c2) + eps));
  });
}

ONE_PASS_KERNEL(nadam, 11, 2)
CODED_KERNEL(nadam, 11, 2)

// RAdam (scale_by_radam, scale_by_learning_rate), with Adam's m and v:
//   rectified (rho_t > threshold): u = r (m / c1) / (sqrt(v / c2) + eps), or with eps on the raw
//   root r sqrt(c2) / (sqrt(v) + eps) (m / c1);  else u = m / c1;  d = -lr u
// hyper: b1, 1-b1, b2, 1-b2, c1, c2, eps, rectified (1 or 0), r, sqrt(c2), -lr.
template <bool kStep, bool kRectified, bool kRawSqrt, typename L>
void radam_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], c1 = h[4], c2 = h[5], eps = h[6];
  const float r = h[8], root_c2 = h[9], nlr = h[10];
  for_elements<kStep, 2>(leaf, lo, hi, [=](float gi, float, float* s) {
    const auto [mi, vi] = adam_moments(s[0], s[1], gi, b1, ob1, b2, ob2);
    float factor = 1.0f;
    if (kRectified) factor = r * (kRawSqrt ? root_c2 / (std::sqrt(vi) + eps) : 1.0f / (std::sqrt(vi / c2) + eps));
    return nlr * (factor * (mi / c1));
  });
}

ffi::Error radam(KERNEL_OPERANDS, bool eps_on_raw_sqrt, bool step) {
  const bool rectified = hyper.element_count() == 11 && hyper.typed_data()[7] != 0.0f;
  const Loop loop = pick([](auto... k) -> Loop { return radam_loop<k...>; }, step, rectified, eps_on_raw_sqrt);
  return one_pass<11>({pool, hyper, info, args, rets}, "fused radam", 2, step, loop);
}

ffi::Error radam_q8(KERNEL_OPERANDS, bool eps_on_raw_sqrt, bool step) {
  const bool rectified = hyper.element_count() == 11 + 2 * kTableSize && hyper.typed_data()[7] != 0.0f;
  const QLoop loop = pick([](auto... k) -> QLoop { return radam_loop<k...>; }, step, rectified, eps_on_raw_sqrt);
  return coded_pass<11>({pool, hyper, info, args, rets}, "fused 8-bit radam", 2, step, loop);
}

// AdaX (scale_by_adax, scale_by_learning_rate), v the bias-corrected v_hat:
//   m = b1 m + (1-b1) g;  v = v + w (g^2 - v);  d = -lr m / (sqrt(v) + eps)
template <bool kStep, typename L>
void adax_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], w = h[2], eps = h[3], nlr = h[4];
  for_elements<kStep, 2>(leaf, lo, hi, [=](float gi, float, float* s) {
    const float mi = b1 * s[0] + ob1 * gi;
    const float vi = s[1] + w * (gi * gi - s[1]);
    s[0] = mi;
    s[1] = vi;
    return nlr * (mi / (std::sqrt(vi) + eps));
  });
}

ONE_PASS_KERNEL(adax, 5, 2)
CODED_KERNEL(adax, 5, 2)

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adam, adam, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_amsgrad, amsgrad, OPTIMIZERS_BIND.Attr<bool>("raw").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adamax, adamax, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_nadam, nadam, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_radam, radam,
                              OPTIMIZERS_BIND.Attr<bool>("eps_on_raw_sqrt").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adax, adax, OPTIMIZERS_BIND.Attr<bool>("step"));

// The same kernels on 8-bit state (quantized.h).
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adam_q8, adam_q8, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_amsgrad_q8, amsgrad_q8, OPTIMIZERS_BIND.Attr<bool>("raw").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adamax_q8, adamax_q8, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_nadam_q8, nadam_q8, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_radam_q8, radam_q8,
                              OPTIMIZERS_BIND.Attr<bool>("eps_on_raw_sqrt").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adax_q8, adax_q8, OPTIMIZERS_BIND.Attr<bool>("step"));
