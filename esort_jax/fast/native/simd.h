// Shared helpers of the native kernels: 16-float vectors (one AVX-512 register; GCC splits
// them on narrower machines) and a parallel-for over XLA's intra-op thread pool.
#ifndef ESORT_JAX_NATIVE_SIMD_H_
#define ESORT_JAX_NATIVE_SIMD_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>

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
// when every item is done. Which thread runs an item does not change any result (items write
// disjoint outputs; reductions over items are done afterwards in item order).
//
// The caller never waits for a helper task to *start*: it claims items from a shared counter
// until none are left, then waits only for the items other threads have claimed and are
// running. A helper that starts late (behind another kernel on a small or busy pool, or on the
// caller's own thread when the pool has one thread) finds no item and returns without touching
// the caller's stack: the counters live in a heap block shared by reference count, and `work`
// is only called for a claimed item, while the caller is still waiting for it.
template <typename Work>
struct ParallelFor {
  explicit ParallelFor(const Work& w, int64_t n) : work(&w), items(n) {}
  const Work* work;
  const int64_t items;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::mutex mu;
  std::condition_variable cv;

  // Runs items until none is left to claim.
  void run() {
    for (int64_t k; (k = next.fetch_add(1)) < items;) {
      (*work)(k);
      if (done.fetch_add(1) + 1 == items) {  // the last item: wake the caller
        std::lock_guard<std::mutex> lock(mu);
        cv.notify_all();
      }
    }
  }
};

template <typename Work>
void parallel_for(xla::ffi::ThreadPool& pool, int64_t items, Work&& work) {
  if (items <= 0) return;
  auto shared = std::make_shared<ParallelFor<std::decay_t<Work>>>(work, items);
  const int64_t helpers = std::max<int64_t>(0, std::min<int64_t>(pool.num_threads(), items - 1));
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule([shared] { shared->run(); });
  shared->run();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->cv.wait(lock, [&] { return shared->done.load() == items; });
}

}  // namespace esort

#endif  // ESORT_JAX_NATIVE_SIMD_H_
