// The momentum kernels: SGD (../_momentum.py), Funnelled SGDM (../_funnelled_sgdm.py) and
// NovoGrad (../_novograd.py). See common.h.

#include "quantized.h"

namespace {

// SGD (add_decayed_weights, trace, scale_by_learning_rate):
//   g = g + lambda p;  m = g + mu m;  u = m (heavy ball) or g + mu m (Nesterov);  d = -lr u
template <bool kStep, bool kDecay, bool kMomentum, bool kNesterov, typename L>
void sgd_loop(const L& leaf, int64_t lo, int64_t hi, const float* h) {
  const float mu = h[0], nlr = h[1], lam = leaf.decay;
  for_elements<kStep, kMomentum>(leaf, lo, hi, [=](float gi, float pi, float* s) {
    if (kDecay) gi = gi + lam * pi;
    float u = gi;
    if (kMomentum) {
      const float mi = gi + mu * s[0];
      s[0] = mi;
      u = kNesterov ? gi + mu * mi : mi;
    }
    return nlr * u;
  });
}

ffi::Error sgd(KERNEL_OPERANDS, bool momentum, bool nesterov, bool step) {
  auto loop = [=](bool decay) {
    return pick([](auto... k) -> Loop { return sgd_loop<k...>; }, step, decay, momentum, nesterov && momentum);
  };
  return one_pass<2>({pool, hyper, info, args, rets}, "fused sgd", momentum ? 1 : 0, step, loop(false), loop(true));
}

ffi::Error sgd_q8(KERNEL_OPERANDS, bool momentum, bool nesterov, bool step) {
  if (!momentum) return invalid("fused 8-bit sgd: needs the momentum buffer");
  auto loop = [=](bool decay) {
    return pick([](auto s, auto d, auto n) -> QLoop { return sgd_loop<s, d, true, n>; }, step, decay, nesterov);
  };
  return coded_pass<2>({pool, hyper, info, args, rets}, "fused 8-bit sgd", 1, step, loop(false), loop(true));
}

// Funnelled SGDM (scale_by_funnelled_sgdm, scale_by_learning_rate), s the new global scale
// (from XLA's dot product u.g over every leaf):
//   p = p exp(gamma_p m g);  m = beta m + (1-beta) g;  u = mu u + p g;  d = -lr (s u)
template <bool kStep>
void funnelled_sgdm_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float gp = h[0], beta = h[1], obeta = h[2], mu = h[3], scale = h[4], nlr = h[5];
  for_elements<kStep, 3>(leaf, lo, hi, [=](float gi, float, float* s) {  // s: the gain p, the average m, u
    const float q = s[0] * exp_f32(gp * s[1] * gi);
    const float ui = mu * s[2] + q * gi;
    s[0] = q;
    s[1] = beta * s[1] + obeta * gi;
    s[2] = ui;
    return nlr * (scale * ui);
  });
}

ONE_PASS_KERNEL(funnelled_sgdm, 6, 3)

// NovoGrad (scale_by_novograd, scale_by_learning_rate), with each leaf's denominator
// den = sqrt(v) + eps (no eps at the first step; 1 where that is 0), from the per-leaf second
// moment v the caller computes from the leaf's sum of squares:
//   m = b1 m + g / den + lambda w;  d = -lr m
// hyper: b1, lambda, -lr; info: the L denominators.
template <bool kStep>
void novograd_loop(const Leaf& leaf, int64_t lo, int64_t hi, const float* h) {
  const float b1 = h[0], lam = h[1], nlr = h[2], den = leaf.decay;
  for_elements<kStep, 1>(leaf, lo, hi, [=](float gi, float wi, float* s) {
    const float mi = b1 * s[0] + gi / den + lam * wi;
    s[0] = mi;
    return nlr * mi;
  });
}

ONE_PASS_KERNEL(novograd, 3, 1)

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_sgd, sgd,
                              OPTIMIZERS_BIND.Attr<bool>("momentum").Attr<bool>("nesterov").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_sgd_q8, sgd_q8,
                              OPTIMIZERS_BIND.Attr<bool>("momentum").Attr<bool>("nesterov").Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_funnelled_sgdm, funnelled_sgdm, OPTIMIZERS_BIND.Attr<bool>("step"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_novograd, novograd, OPTIMIZERS_BIND.Attr<bool>("step"));
