// SM3's kernel (../_sm3.py): one pass (SM3-II) or two (SM3-I). See common.h.

#include "common.h"

namespace {

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

// The leaves, their covers and their chunks (info: one number per leaf), the state buffers aliased.
ffi::Error sm3_leaves(const Call& call, bool momentum, bool step, std::vector<Leaf>& leaves,
                      std::vector<Covers>& covers, std::vector<Sm3Span>& spans) {
  const auto& [pool, hyper, info, args, rets] = call;
  const size_t L = info.element_count();
  const size_t n_state = momentum ? 2 : 1;
  if (args.size() != (2 + n_state) * L || rets.size() != (1 + n_state) * L)
    return invalid("fused sm3: wrong number of buffers");
  leaves.resize(L);
  covers.resize(L);
  for (size_t i = 0; i < L; ++i) {
    Leaf& leaf = leaves[i];
    Covers& c = covers[i];
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
        spans.push_back({static_cast<int64_t>(i), b, std::min(b + kChunk, leaf.n), 0});
      continue;
    }
    const int64_t rows = leaf.n / c.cols;
    const int64_t per = rows_per_chunk(rows, c.cols);
    int64_t slot = 0;
    for (int64_t r0 = 0; r0 < rows; r0 += per, ++slot)
      spans.push_back({static_cast<int64_t>(i), r0 * c.cols, std::min(rows, r0 + per) * c.cols, slot});
    c.maxima.assign(slot * c.total, 0u);
  }
  return ffi::Error::Success();
}

ffi::Error sm3(KERNEL_OPERANDS, bool two, bool momentum, bool step) {
  const auto found = scalars<4>("fused sm3", hyper);
  if (!found.has_value()) return found.error();
  auto leaves = std::make_shared<std::vector<Leaf>>();
  auto covers = std::make_shared<std::vector<Covers>>();
  auto spans = std::make_shared<std::vector<Sm3Span>>();
  if (auto e = sm3_leaves({pool, hyper, info, args, rets}, momentum, step, *leaves, *covers, *spans); e.failure())
    return e;
  const std::array<float, 4> h = *found;
  using SpanLoop = void (*)(const Leaf&, Covers&, const Sm3Span&, const float*);
  auto run = [&](SpanLoop loop) {
    parallel_for(pool, static_cast<int64_t>(spans->size()), [=](int64_t j) {
      const Sm3Span& s = (*spans)[j];
      loop((*leaves)[s.leaf], (*covers)[s.leaf], s, h.data());
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
  const SpanLoop update = pick([](auto... k) -> SpanLoop { return sm3_span<k..., false>; }, step, momentum, two);
  if (!two) {
    run(sm3_span<false, false, false, true>);  // pass 1: the maxima of g^2
    combine(true);
  }
  run(update);
  if (two) combine(false);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_sm3, sm3,
                              OPTIMIZERS_BIND.Attr<bool>("two").Attr<bool>("momentum").Attr<bool>("step"));
