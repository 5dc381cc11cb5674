// The one-pass kernels on 8-bit state: with_quantized_state (../_quantized.py) around a fused=True
// optimizer. Each state buffer of a leaf is an 8-bit code per element (int8: the signed dynamic
// code, uint8: the unsigned one) and one float32 scale per block of B consecutive elements of
// the flat leaf (the last block may be shorter), as ../_quantized_codes.py keeps it. A kernel
// NAME_q8 runs the float32 kernel's own per-element update (NAME_loop, instantiated with a QLeaf:
// the for_elements below) block by block: the block's codes decoded into a small float32 array
// (table value times scale, as dequantize), the update, the block's absmax and the new codes
// (encode: the float32 operations of quantize, in its order), written in place. One pass over
// the codes: 2 bytes of state per element read and 2 written for Adam, where float32 state moves
// 16.
//
// Operands after those of KERNEL_OPERANDS' float kernels: hyper holds the kernel's scalars, then
// the two 256-entry tables of the codes' values (the signed code's, indexed by the int8 code's
// bits, then the unsigned one's: _quantized_codes.table); info the L leaves' decays, then their
// block sizes B; each state buffer is two operands per leaf, its codes then its scales (buffer
// after buffer, leaf after leaf in each), aliased to the results of the same order.

#pragma once

#include <cfloat>

#include "common.h"

namespace {

constexpr int kTableSize = 256;

struct Coded {                   // a state buffer of a leaf, as codes and block scales
  uint8_t* codes;                // int8 or uint8 codes (an int8 code's table index is its bits)
  float* scales;                 // one per block
  const float* table;            // the value of each code
  bool is_signed;                // int8 (signed code) or uint8
};

struct QLeaf : Leaf {  // a leaf with coded state (m, v, w of Leaf unused)
  Coded state[3];
  int64_t block;  // elements per scale
};

using QLeaves = std::shared_ptr<std::vector<QLeaf>>;

using QLoop = void (*)(const QLeaf&, int64_t, int64_t, const float*);

// quantize's decades (_quantized_codes._decade): float32(10^-k), 10^k and n = 2^(top-k), k = 0..6.
constexpr float kTenths[7] = {1.0f, 1e-1f, 1e-2f, 1e-3f, 1e-4f, 1e-5f, 1e-6f};
constexpr float kTens[7] = {1.0f, 1e1f, 1e2f, 1e3f, 1e4f, 1e5f, 1e6f};

// The code of x in a block whose 1/absmax is ``inverse``: _quantized_codes.quantize at one
// element, the same float32 operations in the same order: y = min(|x| inverse, 1); its decade
// e by compares (power = 10^e, n = n_e = 2^(top-e)); unsigned: k = round((y power - 0.1) (n / 0.9));
// signed: v = (y power - 0.1) (n / 0.9), or in the lowest decade v = y power n, and the stochastic
// k = min(floor(max(v, 0) + dither), n) (n at y = 1); a = n - 1 + k (unsigned: n - 2 + k).
// As compiled by XLA:CPU, which contracts y power - 0.1 into a fused multiply-add where the
// product has no other use (the unsigned code: exhaustively checked over [0, 1]; where it has,
// the signed code, it does not);
// a non-finite x gets the NaN code (-128, 255), a positive x an unsigned code above 0.
// The unsigned code: quantize's clip of k to [0, n] never binds (y power is within an ulp of [0.1, 1], so
// (y power - 0.1) n / 0.9 lies in (-0.5, n + 0.5)) and is left out. Selects only, no branches,
// so that the loop over a block vectorizes (with -fno-trapping-math: a select may compute both
// of its sides). kInfinite: ``inverse`` is inf (a subnormal absmax), where 0 inverse is NaN:
// XLA converts the NaN a to 0, the code of y = 0.
// _quantized_codes.dither: a number in [0, 1) from y's float32 bits (but the last 12) and its position.
inline float dither(float y, uint32_t position) {
  uint32_t h = (__builtin_bit_cast(uint32_t, y) >> 12) ^ (position * 0x9E3779B9u);
  h *= 0x85EBCA6Bu;
  h ^= h >> 15;
  h *= 0xC2B2AE35u;
  h ^= h >> 13;
  return static_cast<float>(h >> 8) * 0x1p-24f;
}

template <bool kSigned, bool kInfinite = false>
inline uint8_t encode(float x, float inverse, uint32_t position) {
  constexpr int32_t top = kSigned ? 6 : 7;  // decade 0 has n_0 = 2^top values
  const float ax = std::fabs(x);
  const bool finite = ax <= FLT_MAX;
  const float r = (kSigned ? ax : (x > 0.0f ? x : 0.0f)) * inverse;  // any y for a non-finite x
  const float y = kInfinite && r != r ? 0.0f : (r < 1.0f ? r : 1.0f);
  float power = 1.0f;
  int32_t e = 0;
  for (int32_t d = 1; d < 7; ++d) {
    const bool on = y <= kTenths[d];
    power = on ? kTens[d] : power;
    e += on;
  }
  const float n = __builtin_bit_cast(float, (127 + top - e) << 23);  // 2^(top - e), exact
  const float per = n * static_cast<float>(1.0 / 0.9);
  float k;
  if (kSigned) {
    const float z = y * power;
    const bool lowest = e == 6;
    const float v = (z - (lowest ? 0.0f : 0.1f)) * (lowest ? n : per);  // z - 0 and z n: the lowest decade's
    const float up = std::floor((v > 0.0f ? v : 0.0f) + dither(y, position));  // stochastic rounding
    k = y >= 1.0f ? n : (up < n ? up : n);
  } else {
    k = std::nearbyint(std::fma(y, power, -0.1f) * per);  // XLA:CPU fuses y power - 0.1 into one FMA here
  }
  const int32_t a = static_cast<int32_t>(n - (kSigned ? 1.0f : 2.0f) + k);
  if (kSigned) return static_cast<uint8_t>(finite ? (x < 0.0f ? -a : a) : -128);
  return static_cast<uint8_t>(finite ? (y > 0.0f ? std::max(a, 1) : a) : 255);
}

// The block's absmax of the finite magnitudes (|x|, or max(x, 0) unsigned): the largest of
// their bits as integers (non-negative floats order as their bits; a vectorizable reduction).
template <bool kSigned>
inline float block_absmax(const float* __restrict x, int64_t n) {
  int32_t most = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float v = x[j], a = std::fabs(v);
    const float m = a <= FLT_MAX ? (kSigned ? a : (v > 0.0f ? v : 0.0f)) : 0.0f;
    const int32_t bits = __builtin_bit_cast(int32_t, m);
    most = most > bits ? most : bits;
  }
  return __builtin_bit_cast(float, most);
}

// Quantizes the n new values x of one block into codes and its scale (quantize's absmax and
// inverse = 1/absmax, 0 for a block of zeros).
template <bool kSigned>
inline void encode_block(const float* __restrict x, int64_t n, uint8_t* __restrict codes, float* scale) {
  const float absmax = block_absmax<kSigned>(x, n);
  const float inverse = absmax > 0.0f ? 1.0f / absmax : 0.0f;
  if (inverse <= FLT_MAX) {
    for (int64_t j = 0; j < n; ++j) codes[j] = encode<kSigned>(x[j], inverse, static_cast<uint32_t>(j));
  } else {
    for (int64_t j = 0; j < n; ++j) codes[j] = encode<kSigned, true>(x[j], inverse, static_cast<uint32_t>(j));
  }
  *scale = absmax;
}

// Decodes n codes of one block: table value times the block's scale (dequantize).
inline void decode_block(const uint8_t* __restrict codes, const float* __restrict table, float scale, int64_t n,
                         float* __restrict x) {
  for (int64_t j = 0; j < n; ++j) x[j] = table[codes[j]] * scale;
}

constexpr int64_t kTile = 1024;  // elements decoded, updated and encoded at a time (whole blocks)

// The elementwise update of elements [lo, hi) of a leaf with coded state, lo a multiple of its
// block size: tile by tile of whole blocks, decode each state buffer into a float32 array, run
// body(g, p, s) at each element as the float32 for_elements does (kStep: the params in place,
// else the updates), then encode each buffer's new values block by block, in place.
template <bool kStep, int kState, bool kWrite = true, typename Body>
inline void for_elements(const QLeaf& leaf, int64_t lo, int64_t hi, Body body) {
  static_assert(kState >= 1 && kState <= 3 && kWrite, "1 to 3 coded state buffers, updated");
  const int64_t block = leaf.block;
  const int64_t tile = std::max(block, kTile);  // a multiple of the block (both powers of two), or one block
  std::unique_ptr<float[]> scratch(new float[kState * tile]);
  for (int64_t t = lo; t < hi; t += tile) {
    const int64_t count = std::min(tile, hi - t);
    float* x[3] = {scratch.get(), kState > 1 ? scratch.get() + tile : nullptr,
                   kState > 2 ? scratch.get() + 2 * tile : nullptr};
    for (int k = 0; k < kState; ++k) {
      const Coded& c = leaf.state[k];
      for (int64_t b = 0; b < count; b += block)
        decode_block(c.codes + t + b, c.table, c.scales[(t + b) / block], std::min(block, count - b), x[k] + b);
    }
    float* __restrict p = leaf.p + t;
    const float* __restrict g = leaf.g + t;
    float* __restrict out = leaf.out == nullptr ? nullptr : leaf.out + t;
    float* __restrict s0 = x[0];
    float* __restrict s1 = x[1];
    float* __restrict s2 = x[2];
    for (int64_t i = 0; i < count; ++i) {
      float s[3] = {s0[i], kState > 1 ? s1[i] : 0.0f, kState > 2 ? s2[i] : 0.0f};
      const float d = body(g[i], p[i], s);
      s0[i] = s[0];
      if (kState > 1) s1[i] = s[1];
      if (kState > 2) s2[i] = s[2];
      emit<kStep>(out, p, i, d);
    }
    for (int k = 0; k < kState; ++k) {
      const Coded& c = leaf.state[k];
      for (int64_t b = 0; b < count; b += block) {
        const int64_t n = std::min(block, count - b);
        float* scale = c.scales + (t + b) / block;
        if (c.is_signed) encode_block<true>(x[k] + b, n, c.codes + t + b, scale);
        else encode_block<false>(x[k] + b, n, c.codes + t + b, scale);
      }
    }
  }
}

// Runs body(leaf, begin, end) over all leaves in chunks of whole blocks (kChunk elements, or one
// block where blocks are larger), numbered leaf by leaf, on the pool's threads and this one.
template <typename Body>
void parallel_blocks(ffi::ThreadPool& pool, QLeaves leaves, Body body) {
  auto chunks = std::make_shared<std::vector<std::pair<int64_t, int64_t>>>();  // (leaf, begin)
  for (int64_t i = 0; i < static_cast<int64_t>(leaves->size()); ++i) {
    const QLeaf& leaf = (*leaves)[i];
    for (int64_t b = 0; b < leaf.n; b += std::max(kChunk, leaf.block)) chunks->emplace_back(i, b);
  }
  parallel_for(pool, static_cast<int64_t>(chunks->size()), [chunks, leaves, body](int64_t j) {
    const auto [i, b] = (*chunks)[j];
    const QLeaf& leaf = (*leaves)[i];
    body(leaf, b, std::min(b + std::max(kChunk, leaf.block), leaf.n));
  });
}

// The coded state buffer k of leaf i of L: its codes and scales, operands 2L + 2(kL + i) and one
// more, aliased to the results L + 2(kL + i) and one more.
inline ffi::Error coded_buffer(const Call& call, size_t L, size_t k, size_t i, const float* tables, QLeaf& leaf) {
  const size_t arg = 2 * L + 2 * (k * L + i), ret = L + 2 * (k * L + i);
  auto codes = call.args.get<ffi::AnyBuffer>(arg), scales = call.args.get<ffi::AnyBuffer>(arg + 1);
  auto new_codes = call.rets.get<ffi::AnyBuffer>(ret), new_scales = call.rets.get<ffi::AnyBuffer>(ret + 1);
  if (!codes.has_value() || !scales.has_value() || !new_codes.has_value() || !new_scales.has_value())
    return invalid("fused 8-bit optimizer: bad buffer");
  if (codes->untyped_data() != new_codes.value()->untyped_data() ||
      scales->untyped_data() != new_scales.value()->untyped_data())
    return invalid("fused 8-bit optimizer: state not aliased");
  const auto type = codes->element_type();
  if ((type != ffi::DataType::S8 && type != ffi::DataType::U8) || scales->element_type() != ffi::DataType::F32)
    return invalid("fused 8-bit optimizer: codes must be int8 or uint8, scales float32");
  const int64_t blocks = leaf.block > 0 ? (leaf.n + leaf.block - 1) / leaf.block : 0;
  if (static_cast<int64_t>(codes->element_count()) != leaf.n || static_cast<int64_t>(scales->element_count()) != blocks)
    return invalid("fused 8-bit optimizer: codes or scales of the wrong size");
  const bool is_signed = type == ffi::DataType::S8;
  leaf.state[k] = {static_cast<uint8_t*>(new_codes.value()->untyped_data()), data(**new_scales),
                   tables + (is_signed ? 0 : kTableSize), is_signed};
  return ffi::Error::Success();
}

// The L leaves with n_state coded buffers each (L from the operands' count), their decays and
// block sizes from info.
inline ffi::ErrorOr<QLeaves> collect_coded(const Call& call, int n_state, int n_scalars, bool step) {
  const size_t per_leaf = 2 + 2 * n_state;
  const size_t L = call.args.size() / per_leaf;
  if (call.args.size() != per_leaf * L || call.rets.size() != (1 + 2 * n_state) * L ||
      call.info.element_count() != 2 * L)
    return ffi::Unexpected(invalid("fused 8-bit optimizer: wrong number of buffers"));
  if (call.hyper.element_count() != static_cast<size_t>(n_scalars + 2 * kTableSize))
    return ffi::Unexpected(invalid("fused 8-bit optimizer: scalars and two tables of 256 values expected"));
  const float* tables = call.hyper.typed_data() + n_scalars;
  auto leaves = std::make_shared<std::vector<QLeaf>>(L);
  for (size_t i = 0; i < L; ++i) {
    QLeaf& leaf = (*leaves)[i];
    if (auto e = leaf_io(call.args, call.rets, L, i, step, leaf); e.failure()) return ffi::Unexpected(e);
    leaf.m = leaf.v = leaf.w = nullptr;
    leaf.decay = call.info.typed_data()[i];
    const float block = call.info.typed_data()[L + i];
    leaf.block = static_cast<int64_t>(block);
    if (!(block >= 1.0f) || static_cast<float>(leaf.block) != block)
      return ffi::Unexpected(invalid("fused 8-bit optimizer: bad block size"));
    for (int k = 0; k < n_state; ++k)
      if (auto e = coded_buffer(call, L, k, i, tables, leaf); e.failure()) return ffi::Unexpected(e);
  }
  return leaves;
}

// The entry of the one-pass kernels on coded state (see one_pass): per chunk ``plain`` or, on a
// leaf with a weight decay, ``decayed``.
template <int kScalars>
ffi::Error coded_pass(const Call& call, const char* name, int n_state, bool step, QLoop plain, QLoop decayed) {
  auto leaves = collect_coded(call, n_state, kScalars, step);
  if (!leaves.has_value()) return ffi::Error::InvalidArgument(std::string(name) + ": " + leaves.error().message());
  const float* h = call.hyper.typed_data();
  std::array<float, kScalars> scalars;
  std::copy(h, h + kScalars, scalars.begin());
  parallel_blocks(call.pool, *leaves, [scalars, plain, decayed](const QLeaf& leaf, int64_t lo, int64_t hi) {
    (leaf.decay != 0.0f ? decayed : plain)(leaf, lo, hi, scalars.data());
  });
  return ffi::Error::Success();
}

template <int kScalars>
ffi::Error coded_pass(const Call& call, const char* name, int n_state, bool step, QLoop loop) {
  return coded_pass<kScalars>(call, name, n_state, step, loop, loop);
}

// NAME_q8, the kernel NAME (ONE_PASS_KERNEL) on coded state.
#define CODED_KERNEL(NAME, kScalars, kState)                                                           \
  ffi::Error NAME##_q8(KERNEL_OPERANDS, bool step) {                                                   \
    const QLoop loop = pick([](auto s) -> QLoop { return NAME##_loop<s>; }, step);                     \
    return coded_pass<kScalars>({pool, hyper, info, args, rets}, "fused 8-bit " #NAME, kState, step, loop); \
  }

// NAME_q8, the kernel NAME (ONE_PASS_DECAYED_KERNEL) on coded state.
#define CODED_DECAYED_KERNEL(NAME, kScalars, kState)                                                               \
  ffi::Error NAME##_q8(KERNEL_OPERANDS, bool step) {                                                               \
    auto loop = [step](bool decay) {                                                                               \
      return pick([](auto... k) -> QLoop { return NAME##_loop<k...>; }, step, decay);                              \
    };                                                                                                             \
    return coded_pass<kScalars>({pool, hyper, info, args, rets}, "fused 8-bit " #NAME, kState, step, loop(false),  \
                                loop(true));                                                                        \
  }

}  // namespace
