// Adafactor's kernel (../_adafactor.py): three passes (the second moments and sums of squares, the
// clipping sums of factored leaves, the update). See common.h.

#include "common.h"

namespace {

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
    const int64_t per = rows_per_chunk(rows, cols);
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

// The leaves and their factors (info: per leaf 1 if factored, else 0), the state buffers aliased.
ffi::Error adafactor_leaves(const Call& call, bool momentum, bool step, std::vector<Leaf>& leaves,
                            std::vector<Factors>& f) {
  const auto& [pool, hyper, info, args, rets] = call;
  const size_t L = info.element_count();
  size_t n_state = 0;
  for (size_t i = 0; i < L; ++i) n_state += info.typed_data()[i] != 0.0f ? 2 : 1;
  const size_t n_mu = momentum ? L : 0;
  if (args.size() != 2 * L + n_state + n_mu || rets.size() != L + n_state + n_mu)
    return invalid("fused adafactor: wrong number of buffers");
  leaves.resize(L);
  f.resize(L);
  for (size_t i = 0, k = 0; i < L; ++i) {
    Leaf& leaf = leaves[i];
    Factors& fi = f[i];
    if (auto e = leaf_io(args, rets, L, i, step, leaf); e.failure()) return e;
    fi.factored = info.typed_data()[i] != 0.0f;
    if (fi.factored) {
      const auto dims = args.get<ffi::AnyBuffer>(L + i)->dimensions();
      if (dims.size() < 2) return invalid("fused adafactor: a factored leaf needs 2 dims");
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
  return ffi::Error::Success();
}

ffi::Error adafactor(KERNEL_OPERANDS, bool momentum, bool step) {
  const auto found = scalars<8>("fused adafactor", hyper);
  if (!found.has_value()) return found.error();
  auto leaves = std::make_shared<std::vector<Leaf>>();
  auto f = std::make_shared<std::vector<Factors>>();
  if (auto e = adafactor_leaves({pool, hyper, info, args, rets}, momentum, step, *leaves, *f); e.failure()) return e;
  const size_t L = leaves->size();
  const std::array<float, 8> h = *found;
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

  auto loop = [=](bool factored) {
    return pick([](auto... k) -> AdafactorLoop { return adafactor_apply<k...>; }, step, factored, momentum);
  };
  const AdafactorLoop full = loop(false), factored = loop(true);
  parallel_for(pool, S, [=](int64_t j) {  // pass 3
    const Span& s = (*spans)[j];
    const Factors& fi = (*f)[s.leaf];
    (fi.factored ? factored : full)((*leaves)[s.leaf], fi, s.lo, s.hi, h.data());
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(optimizers_adafactor, adafactor,
                              OPTIMIZERS_BIND.Attr<bool>("momentum").Attr<bool>("step"));
