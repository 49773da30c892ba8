// Shared helpers of the native kernels: 16-float vectors (one AVX-512 register; GCC splits
// them on narrower machines) and a scoped parallel-for over XLA's intra-op thread pool.
#ifndef ESORT_JAX_NATIVE_SIMD_H_
#define ESORT_JAX_NATIVE_SIMD_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace esort {

constexpr int kLanes = 16;
typedef float v16 __attribute__((vector_size(64)));

inline v16 load(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
inline v16 relu(v16 a) { const v16 zero = {}; return a > zero ? a : zero; }

// The first `lanes` floats at p, zero-padded to 16 lanes.
inline v16 load_lanes(const float* p, int lanes) {
  if (lanes == kLanes) return load(p);
  float padded[kLanes] = {};
  std::memcpy(padded, p, sizeof(float) * lanes);
  return load(padded);
}

inline void store_lanes(float* p, v16 v, int lanes) {
  if (lanes == kLanes) { store(p, v); return; }
  float values[kLanes];
  store(values, v);
  std::memcpy(p, values, sizeof(float) * lanes);
}

// Σ over items i (in order), then over the 16 lanes (in order), of partial[i * stride + j]:
// how the kernels reduce per-work-item partial sums, in an order that does not depend on
// which thread computed which item.
inline float sum_items_and_lanes(const v16* partial, int64_t items, int64_t stride, int64_t j) {
  v16 sum = partial[j];
  for (int64_t i = 1; i < items; ++i) sum += partial[i * stride + j];
  float lanes[kLanes];
  store(lanes, sum);
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// Runs work(k) for k in [0, items) on the calling thread and XLA's intra-op threads; returns
// when all are done. Which thread runs an item does not change any result (items write
// disjoint outputs; reductions over items are done afterwards in item order).
template <typename Work>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t items, Work&& work) {
  std::atomic<int64_t> next{0};
  auto run = [&] {
    for (int64_t k; (k = next.fetch_add(1)) < items;) work(k);
  };
  const int64_t helpers = std::max<int64_t>(0, std::min<int64_t>(pool.num_threads(), items - 1));
  std::mutex mu;
  std::condition_variable cv;
  int64_t finished = 0;
  for (int64_t h = 0; h < helpers; ++h) {
    pool.Schedule([&] {
      run();
      std::lock_guard<std::mutex> lock(mu);
      if (++finished == helpers) cv.notify_one();
    });
  }
  run();
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return finished == helpers; });
}

}  // namespace esort

#endif  // ESORT_JAX_NATIVE_SIMD_H_
