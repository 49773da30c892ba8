// out[f, k] = sum_n a[f, n] * b[k, n] for a [F, N], b [K, N] with N long and F, K small: the
// weight gradient of a Dense shared by all (window, channel) pairs (N = B * C = 393 k at batch
// 1024 and 384 channels, F, K = 8, 16). XLA:CPU ran this product on one thread at ~12
// GFLOP/s (8 ms of the training step); it is memory-bound (one read of a and b) and here
// takes one pass over both, split over XLA's intra-op threads. Built and registered by
// esort_jax/native/__init__.py; used by esort_jax.model (the native training path).
#include <cstdint>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using esort::kLanes;
using esort::load;
using esort::v16;

constexpr int64_t kItemLength = 4096;  // n per work item (a and b slices stay in L2)

// acc[i][j] += a[f0 + i, n] * b[k0 + j, n] over n in [n0, n1) (n1 - n0 a multiple of 16).
template <int FB, int KB>
inline void block(const float* a, const float* b, int64_t n_total, int64_t f0, int64_t k0, int64_t n0,
                  int64_t n1, v16* out, int64_t num_k) {
  v16 acc[FB][KB];
  for (int i = 0; i < FB; ++i)
    for (int j = 0; j < KB; ++j) acc[i][j] = v16{};
  for (int64_t n = n0; n < n1; n += kLanes) {
    v16 av[FB];
    for (int i = 0; i < FB; ++i) av[i] = load(a + (f0 + i) * n_total + n);
    for (int j = 0; j < KB; ++j) {
      const v16 bv = load(b + (k0 + j) * n_total + n);
      for (int i = 0; i < FB; ++i) acc[i][j] += av[i] * bv;
    }
  }
  for (int i = 0; i < FB; ++i)
    for (int j = 0; j < KB; ++j) out[(f0 + i) * num_k + k0 + j] += acc[i][j];
}

// Partial sums over n in [n0, n1) into out[f * K + k] (16 lanes each).
void item(const float* a, const float* b, int64_t F, int64_t K, int64_t N, int64_t n0, int64_t n1, v16* out) {
  for (int64_t f = 0; f < F; f += 2) {
    for (int64_t k = 0; k < K; k += 8) {
      if (f + 2 <= F && k + 8 <= K) {
        block<2, 8>(a, b, N, f, k, n0, n1, out, K);
      } else {
        for (int64_t ff = f; ff < std::min(F, f + 2); ++ff)
          for (int64_t kk = k; kk < std::min(K, k + 8); ++kk) block<1, 1>(a, b, N, ff, kk, n0, n1, out, K);
      }
    }
  }
}

ffi::Error LongContractionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                               ffi::ResultBuffer<ffi::F32> out) {
  const auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || od.size() != 2 || ad[1] != bd[1] || od[0] != ad[0] || od[1] != bd[0])
    return ffi::Error::InvalidArgument("esort long contraction: expected a [F, N], b [K, N], out [F, K]");
  const int64_t F = ad[0], K = bd[0], N = ad[1];
  const int64_t vector_n = N / kLanes * kLanes;
  const int64_t items = std::max<int64_t>(1, (vector_n + kItemLength - 1) / kItemLength);
  std::vector<v16> partial(static_cast<size_t>(items * F * K));
  const float* ap = a.typed_data();
  const float* bp = b.typed_data();
  esort::parallel_for(pool, items, [&](int64_t i) {
    v16* mine = partial.data() + i * F * K;
    for (int64_t j = 0; j < F * K; ++j) mine[j] = v16{};
    const int64_t n0 = std::min(vector_n, i * kItemLength), n1 = std::min(vector_n, (i + 1) * kItemLength);
    item(ap, bp, F, K, N, n0, n1, mine);
  });
  float* o = out->typed_data();
  for (int64_t j = 0; j < F * K; ++j) {  // items, lanes, then the scalar tail: a fixed order
    float total = esort::sum_items_and_lanes(partial.data(), items, F * K, j);
    const int64_t f = j / K, k = j % K;
    for (int64_t n = vector_n; n < N; ++n) total += ap[f * N + n] * bp[k * N + n];
    o[j] = total;
  }
  return ffi::Error::Success();
}

}  // namespace

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* EsortLongContraction(XLA_FFI_CallFrame*);

XLA_FFI_DEFINE_HANDLER_SYMBOL(EsortLongContraction, LongContractionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a [F, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b [K, N]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out [F, K]
