// The sign-based kernels: Lion (../_lion.py) and Rprop (../_rprop.py). See common.h.

#include "quantized.h"

namespace {

// Lion (scale_by_lion, add_decayed_weights, scale_by_learning_rate):
//   u = sign(b1 m + (1-b1) g);  m = b2 m + (1-b2) g;  u = u + lambda p;  d = -lr u
template <bool kStep, bool kDecay, typename L>
void lion_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], ob1 = h[1], b2 = h[2], ob2 = h[3], nlr = h[4], lam = leaf.decay;
  for_elements<kStep, 1>(leaf, lo, hi, [=](float gi, float pi, float* s) {
    const float mi = s[0];
    float u = sign(b1 * mi + ob1 * gi);
    s[0] = b2 * mi + ob2 * gi;
    if (kDecay) u = u + lam * pi;
    return nlr * u;
  });
}

ONE_PASS_DECAYED_KERNEL(lion, 5, 1)
CODED_DECAYED_KERNEL(lion, 5, 1)

// Rprop (scale_by_rprop, scale_by_learning_rate), on zeta (step sizes) and the previous gradient q:
//   zeta = clip(zeta * (eta+ if g q > 0, eta- if g q < 0, else 1), zeta_min, zeta_max);
//   g = 0 where g q < 0 (the "torch" form);  q = g;  d = -lr zeta sign(g)
template <bool kStep, bool kTorchForm, typename L>
void rprop_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float up = h[0], down = h[1], low = h[2], high = h[3], nlr = h[4];
  for_elements<kStep, 2>(leaf, lo, hi, [=](float gi, float, float* s) {  // s: zeta, q
    const float q = s[1];
    const bool agree = (gi > 0.0f && q > 0.0f) || (gi < 0.0f && q < 0.0f);
    const bool disagree = (gi > 0.0f && q < 0.0f) || (gi < 0.0f && q > 0.0f);
    const float scaled = s[0] * (agree ? up : (disagree ? down : 1.0f));
    const float z = scaled < low ? low : (scaled > high ? high : scaled);
    if (kTorchForm && disagree) gi = 0.0f;
    s[0] = z;
    s[1] = gi;
    return nlr * (z * sign(gi));
  });
}

ffi::Error rprop(KERNEL_OPERANDS, bool torch_form, bool step) {
  const Loop loop = pick([](auto... k) -> Loop { return rprop_loop<k...>; }, step, torch_form);
  return one_pass<5>({pool, hyper, info, args, rets}, "fused rprop", 2, step, loop);
}

ffi::Error rprop_q8(KERNEL_OPERANDS, bool torch_form, bool step) {
  const QLoop loop = pick([](auto... k) -> QLoop { return rprop_loop<k...>; }, step, torch_form);
  return coded_pass<5>({pool, hyper, info, args, rets}, "fused 8-bit rprop", 2, step, loop);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_lion, lion, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_rprop, rprop, OPTIMIZERS_BIND.Attr<bool>("torch_form").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_lion_q8, lion_q8, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_rprop_q8, rprop_q8,
                              OPTIMIZERS_BIND.Attr<bool>("torch_form").Attr<bool>("step"));
