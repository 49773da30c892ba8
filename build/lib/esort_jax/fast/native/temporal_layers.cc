// The E-Sort network's two temporal layers, fused, for XLA:CPU (called through the XLA FFI;
// built and registered by esort_jax/native/__init__.py, used by esort_jax.infer).
//
// For every output step t (the window starting at input row t) and channel c:
//   a1[f]    = relu(scale1[c] * sum_w x[t + w, c] * k1[w, f] + shift1[f, c])
//   a2[g]    = relu(scale2[c] * sum_f a1[f] * k2[f, g]        + shift2[g, c])
//   out[t, g * C + c] = a2[g]
// i.e. the rows the spatial GEMM takes ([steps, F2 * C], columns (g, c)). XLA computes the
// same thing as two matrix products with the BatchNorm/ReLU passes between them in memory;
// here each value stays in registers from the input load to the output store.
//
// Vectorised over 16 channels (x is time-major, so 16 channels are one 64-byte load), 3
// output steps per tile (24 accumulators for F1 = 8); channel tiles x time ranges are
// spread over XLA's intra-op thread pool. Each output is computed by exactly one thread in a
// fixed order, so results do not depend on the thread count or scheduling.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using esort::kLanes;
using esort::load;
using esort::relu;
using esort::store;
using esort::v16;

constexpr int kMaxF1 = 16, kMaxF2 = 32;

struct Problem {
  const float* x;
  int64_t steps, channels, window;
  const float *k1, *scale1, *shift1, *k2, *scale2, *shift2;
  float* out;
};

struct TileParams {  // per-channel parameters of one 16-channel tile (zero-padded lanes)
  v16 scale1, scale2, shift1[kMaxF1], shift2[kMaxF2];
};

// NT consecutive output steps from t of the channel tile whose column 0 is x[., 0] (row
// stride xs); o points at out[0, c0] (row stride os, feature stride gs); `lanes` valid channels.
template <int F1, int F2, int NT>
inline void step_group(const Problem& p, const float* x, int64_t xs, const TileParams& tp,
                       int64_t t, float* o, int64_t os, int64_t gs, int lanes) {
  v16 acc[NT][F1];
  for (int i = 0; i < NT; ++i)
    for (int f = 0; f < F1; ++f) acc[i][f] = v16{};
  const int window = static_cast<int>(p.window);
  for (int w = 0; w < window; ++w) {
    const float* kw = p.k1 + w * F1;
    v16 xv[NT];
    for (int i = 0; i < NT; ++i) xv[i] = load(x + (t + i + w) * xs);
    for (int f = 0; f < F1; ++f) {  // f outer: one broadcast feeds NT FMAs (no spills)
      const v16 kb = v16{} + kw[f];
      for (int i = 0; i < NT; ++i) acc[i][f] += xv[i] * kb;
    }
  }
  for (int i = 0; i < NT; ++i) {
    v16 a1[F1];
    for (int f = 0; f < F1; ++f) a1[f] = relu(acc[i][f] * tp.scale1 + tp.shift1[f]);
    v16 h2[F2];
    for (int g = 0; g < F2; ++g) h2[g] = v16{};
    for (int f = 0; f < F1; ++f) {
      const float* kf = p.k2 + f * F2;
      for (int g = 0; g < F2; ++g) h2[g] += a1[f] * kf[g];
    }
    float* row = o + (t + i) * os;
    for (int g = 0; g < F2; ++g) {
      const v16 a2 = relu(h2[g] * tp.scale2 + tp.shift2[g]);
      if (lanes == kLanes) {
        store(row + g * gs, a2);
      } else {
        float lane_values[kLanes];
        store(lane_values, a2);
        std::memcpy(row + g * gs, lane_values, sizeof(float) * lanes);
      }
    }
  }
}

// Output steps [t0, t1) of one channel tile, TT steps at a time (TT * F1 accumulators).
template <int F1, int F2, int TT>
void tile_steps(const Problem& p, const float* x, int64_t xs, const TileParams& tp, int64_t t0,
                int64_t t1, float* o, int64_t os, int64_t gs, int lanes) {
  int64_t t = t0;
  for (; t + TT <= t1; t += TT) step_group<F1, F2, TT>(p, x, xs, tp, t, o, os, gs, lanes);
  for (; t < t1; ++t) step_group<F1, F2, 1>(p, x, xs, tp, t, o, os, gs, lanes);
}

// One work item: channels [c0, c0 + 16) (fewer in the last tile), output steps [t0, t1).
template <int F1, int F2>
void run_item(const Problem& p, int64_t c0, int64_t t0, int64_t t1) {
  constexpr int TT = F1 <= 8 ? 3 : 1;
  const int lanes = static_cast<int>(std::min<int64_t>(kLanes, p.channels - c0));
  float padded[kLanes];
  auto gather = [&](const float* row) {  // row[c0 : c0 + lanes], zero-padded to 16 lanes
    std::fill(padded, padded + kLanes, 0.0f);
    std::memcpy(padded, row + c0, sizeof(float) * lanes);
    return load(padded);
  };
  TileParams tp;
  tp.scale1 = gather(p.scale1);
  tp.scale2 = gather(p.scale2);
  for (int f = 0; f < F1; ++f) tp.shift1[f] = gather(p.shift1 + f * p.channels);
  for (int g = 0; g < F2; ++g) tp.shift2[g] = gather(p.shift2 + g * p.channels);
  const int64_t os = static_cast<int64_t>(F2) * p.channels;
  if (lanes == kLanes) {
    tile_steps<F1, F2, TT>(p, p.x + c0, p.channels, tp, t0, t1, p.out + c0, os, p.channels, lanes);
    return;
  }
  // Last, partial tile: its input rows copied into a zero-padded 16-wide slab.
  const int64_t rows = t1 - t0 + p.window - 1;
  float* slab = static_cast<float*>(std::malloc(sizeof(float) * kLanes * rows));
  if (slab == nullptr) std::abort();
  std::memset(slab, 0, sizeof(float) * kLanes * rows);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(slab + r * kLanes, p.x + (t0 + r) * p.channels + c0, sizeof(float) * lanes);
  tile_steps<F1, F2, TT>(p, slab - t0 * kLanes, kLanes, tp, t0, t1, p.out + c0, os, p.channels,
                         lanes);
  std::free(slab);
}

using ItemFn = void (*)(const Problem&, int64_t, int64_t, int64_t);

// Feature counts (F1, F2) with a compiled kernel; keep in sync with SUPPORTED_FEATURES in
// esort_jax/native/__init__.py.
ItemFn kernel_for(int64_t f1, int64_t f2) {
#define ESORT_KERNEL(A, B) \
  if (f1 == A && f2 == B) return &run_item<A, B>;
  ESORT_KERNEL(2, 4) ESORT_KERNEL(4, 8) ESORT_KERNEL(4, 16) ESORT_KERNEL(8, 8)
  ESORT_KERNEL(8, 16) ESORT_KERNEL(8, 32) ESORT_KERNEL(16, 16) ESORT_KERNEL(16, 32)
#undef ESORT_KERNEL
  return nullptr;
}

ffi::Error TemporalLayersImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> k1, ffi::Buffer<ffi::F32> scale1,
                              ffi::Buffer<ffi::F32> shift1, ffi::Buffer<ffi::F32> k2,
                              ffi::Buffer<ffi::F32> scale2, ffi::Buffer<ffi::F32> shift2,
                              ffi::ResultBuffer<ffi::F32> out) {
  const auto xd = x.dimensions(), k1d = k1.dimensions(), k2d = k2.dimensions();
  const auto od = out->dimensions();
  if (xd.size() != 2 || k1d.size() != 2 || k2d.size() != 2 || od.size() != 2)
    return ffi::Error::InvalidArgument("esort temporal layers: x, k1, k2 and out must be 2-D");
  Problem p;
  p.channels = xd[1];
  p.window = k1d[0];
  const int64_t f1 = k1d[1], f2 = k2d[1];
  p.steps = xd[0] - p.window + 1;
  const auto n = [](int64_t v) { return static_cast<size_t>(v); };
  if (p.steps < 1 || k2d[0] != f1 || od[0] != p.steps || od[1] != f2 * p.channels ||
      scale1.element_count() != n(p.channels) || scale2.element_count() != n(p.channels) ||
      shift1.element_count() != n(f1 * p.channels) || shift2.element_count() != n(f2 * p.channels))
    return ffi::Error::InvalidArgument("esort temporal layers: inconsistent shapes");
  const ItemFn item = kernel_for(f1, f2);
  if (item == nullptr)
    return ffi::Error::InvalidArgument("esort temporal layers: no kernel for these feature counts");
  p.x = x.typed_data();
  p.k1 = k1.typed_data();
  p.scale1 = scale1.typed_data();
  p.shift1 = shift1.typed_data();
  p.k2 = k2.typed_data();
  p.scale2 = scale2.typed_data();
  p.shift2 = shift2.typed_data();
  p.out = out->typed_data();

  const int64_t tiles = (p.channels + kLanes - 1) / kLanes;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(4, p.steps / 96));
  const int64_t items = tiles * parts;
  esort::parallel_for(pool, items, [&](int64_t k) {
    const int64_t tile = k / parts, part = k % parts;
    item(p, tile * kLanes, p.steps * part / parts, p.steps * (part + 1) / parts);
  });
  return ffi::Error::Success();
}

}  // namespace

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* EsortTemporalLayers(
    XLA_FFI_CallFrame* call_frame);

XLA_FFI_DEFINE_HANDLER_SYMBOL(EsortTemporalLayers, TemporalLayersImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x [steps + W - 1, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k1 [W, F1]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale1 [C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // shift1 [F1, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // k2 [F1, F2]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale2 [C]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // shift2 [F2, C]
                                  .Ret<ffi::Buffer<ffi::F32>>());  // out [steps, F2 * C]
