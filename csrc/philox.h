// Counter-based Philox4x32-10 and the Gumbel sampling of one row, shared by the CPU and CUDA kernels so
// both compute bit-identical math (only the source of seed/offset differs per device).
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace fastnas {

// Philox4x32-10 block `block` of stream (seed, offset): counter (block, offset), key seed.
C10_HOST_DEVICE inline void philox_block(uint64_t seed, uint64_t offset, uint64_t block,
                                         uint32_t out[4]) {
  uint32_t c0 = static_cast<uint32_t>(block), c1 = static_cast<uint32_t>(block >> 32);
  uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// Sequential reader of the stream: element idx is word idx % 4 of block idx / 4, and each block is
// computed once however many of its words are read in a row.
struct PhiloxReader {
  uint64_t seed, offset;
  uint64_t block = ~uint64_t(0);
  uint32_t words[4] = {0, 0, 0, 0};
  C10_HOST_DEVICE PhiloxReader(uint64_t s, uint64_t o) : seed(s), offset(o) {}
  C10_HOST_DEVICE uint32_t at(uint64_t idx) {
    if ((idx >> 2) != block) {
      block = idx >> 2;
      philox_block(seed, offset, block, words);
    }
    return words[idx & 3];
  }
};

template <typename T>
C10_HOST_DEVICE inline T fn_exp(T x) { return ::exp(x); }
template <>
C10_HOST_DEVICE inline float fn_exp<float>(float x) { return ::expf(x); }
template <typename T>
C10_HOST_DEVICE inline T fn_log(T x) { return ::log(x); }
template <>
C10_HOST_DEVICE inline float fn_log<float>(float x) { return ::logf(x); }
template <typename T>
C10_HOST_DEVICE inline bool fn_isfinite(T x) {
#ifdef __CUDA_ARCH__
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}

// Gumbel(0, 1) noise from one 32-bit Philox word. The uniform lies strictly in (0, 1): float uses
// 23 bits ((k + 0.5) * 2^-23 is exact), double 32 bits.
template <typename T>
C10_HOST_DEVICE inline T gumbel_from_bits(uint32_t r) {
  T u;
  if constexpr (std::is_same<T, double>::value) {
    u = (static_cast<double>(r) + 0.5) * 2.3283064365386963e-10;
  } else {
    u = (static_cast<float>(r >> 9) + 0.5f) * 1.1920928955078125e-07f;
  }
  return -fn_log<T>(-fn_log<T>(u));
}

// Rows up to this many candidates keep z in registers/stack; longer rows recompute it.
constexpr int kGumbelCache = 16;

// One row of gumbel_softmax: z_k = (logit_k + g_k) / tau, soft = softmax(z), index = first argmax of
// z, weights = one_hot(index) if hard else soft. `noise` (opmath_t) may be null: then the noise comes
// from Philox at (seed, offset, base + k). Returns false when a logit is not finite.
template <typename scalar_t, typename opmath_t>
C10_HOST_DEVICE inline bool gumbel_row(const scalar_t* logits, const opmath_t* noise, uint64_t seed,
                                       uint64_t offset, uint64_t base, int64_t K, opmath_t tau,
                                       bool hard, scalar_t* weights, scalar_t* soft,
                                       int64_t* index) {
  PhiloxReader rng(seed, offset);
  auto z_at = [&](int64_t k) -> opmath_t {
    opmath_t g = noise ? noise[k] : gumbel_from_bits<opmath_t>(rng.at(base + k));
    return (static_cast<opmath_t>(logits[k]) + g) / tau;
  };
  opmath_t cache[kGumbelCache];
  bool finite = true;
  opmath_t zmax = 0;
  int64_t arg = 0;
  for (int64_t k = 0; k < K; ++k) {
    finite = finite && fn_isfinite(static_cast<opmath_t>(logits[k]));
    const opmath_t z = z_at(k);
    if (k < kGumbelCache) cache[k] = z;
    if (k == 0 || z > zmax) {
      zmax = z;
      arg = k;
    }
  }
  opmath_t sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    const opmath_t e = fn_exp<opmath_t>((k < kGumbelCache ? cache[k] : z_at(k)) - zmax);
    if (k < kGumbelCache) cache[k] = e;
    sum += e;
  }
  const opmath_t inv = opmath_t(1) / sum;
  for (int64_t k = 0; k < K; ++k) {
    const opmath_t e = k < kGumbelCache ? cache[k] : fn_exp<opmath_t>(z_at(k) - zmax);
    const opmath_t y = e * inv;
    soft[k] = static_cast<scalar_t>(y);
    weights[k] = hard ? static_cast<scalar_t>(k == arg ? 1 : 0) : static_cast<scalar_t>(y);
  }
  *index = arg;
  return finite;
}

// Backward of softmax(z / tau) for one row: grad_logits_k = y_k * (g_k - sum_j g_j y_j) / tau.
template <typename scalar_t, typename opmath_t>
C10_HOST_DEVICE inline void gumbel_row_backward(const scalar_t* grad, const scalar_t* soft,
                                                int64_t K, opmath_t tau, scalar_t* out) {
  opmath_t dot = 0;
  for (int64_t k = 0; k < K; ++k) {
    dot += static_cast<opmath_t>(grad[k]) * static_cast<opmath_t>(soft[k]);
  }
  for (int64_t k = 0; k < K; ++k) {
    opmath_t y = static_cast<opmath_t>(soft[k]);
    out[k] = static_cast<scalar_t>(y * (static_cast<opmath_t>(grad[k]) - dot) / tau);
  }
}

}  // namespace fastnas
