// Tile primitives of the CPU kernels. The float versions are compiled twice (AVX2+FMA and baseline)
// and picked at load time (GCC target_clones), so the wheel runs on any x86-64 yet uses AVX2 where
// present. Reductions use many independent lanes: without -ffast-math a single accumulator would
// serialize on the add latency and never vectorize.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTNAS_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FASTNAS_CLONES
#endif

namespace fastnas {
namespace cpu {

constexpr int kLanes = 32;

#if defined(__GNUC__)
#define FASTNAS_INLINE inline __attribute__((always_inline))
#else
#define FASTNAS_INLINE inline
#endif

// out[i] = w * x[i]
template <typename T>
FASTNAS_INLINE void tile_scale(T* out, const T* x, T w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = w * x[i];
}
// acc[i] += w * x[i]
template <typename T>
FASTNAS_INLINE void tile_axpy(T* acc, const T* x, T w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w * x[i];
}
// sum_i a[i] * b[i], in kLanes independent partial sums
template <typename T>
FASTNAS_INLINE T tile_dot(const T* a, const T* b, int64_t n) {
  T lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += a[i + j] * b[i + j];
  T s = 0;
  for (int j = 0; j < kLanes; ++j) s += lanes[j];
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// out[i] = w * g[i]; returns sum_i g[i] * x[i] (one pass over g for both backward products)
template <typename T>
FASTNAS_INLINE T tile_scale_dot(T* out, const T* g, const T* x, T w, int64_t n) {
  T lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      out[i + j] = w * g[i + j];
      lanes[j] += g[i + j] * x[i + j];
    }
  T s = 0;
  for (int j = 0; j < kLanes; ++j) s += lanes[j];
  for (; i < n; ++i) {
    out[i] = w * g[i];
    s += g[i] * x[i];
  }
  return s;
}

FASTNAS_CLONES float tile_scale_dot_f32(float* out, const float* g, const float* x, float w, int64_t n);
FASTNAS_CLONES void tile_scale_f32(float* out, const float* x, float w, int64_t n);
FASTNAS_CLONES void tile_axpy_f32(float* acc, const float* x, float w, int64_t n);
FASTNAS_CLONES float tile_dot_f32(const float* a, const float* b, int64_t n);

inline void tile_scale(float* out, const float* x, float w, int64_t n) { tile_scale_f32(out, x, w, n); }
inline void tile_axpy(float* acc, const float* x, float w, int64_t n) { tile_axpy_f32(acc, x, w, n); }
inline float tile_dot(const float* a, const float* b, int64_t n) { return tile_dot_f32(a, b, n); }
inline float tile_scale_dot(float* out, const float* g, const float* x, float w, int64_t n) {
  return tile_scale_dot_f32(out, g, x, w, n);
}

}  // namespace cpu
}  // namespace fastnas
