// The network's first layer in training: a Dense over each window's W samples, shared by
// channels, evaluated on windows that are described by row indices into a [R, C] array
// instead of being materialised (built and registered by esort_jax/native/__init__.py, used
// by esort_jax.model.window_dense).
//
// Window b's sample w is rows[starts[b] + w * row_stride]. With the resident training
// traces, starts are the window starts and row_stride = 1; with windows already cut into a
// [W, B, C] array (viewed as [W * B, C]), starts[b] = b and row_stride = B.
//
//   forward:  h[f, b, c]  = sum_w rows[starts[b] + w * row_stride, c] * k[w, f]
//   gradient: dk[w, f]    = sum_{b, c} rows[starts[b] + w * row_stride, c] * g[f, b, c]
//
// XLA:CPU first gathers the windows ([W, B, C], 94 MB at batch 1024 and 384 channels, a
// strided copy at ~5 GB/s), then reads them again for each of the two products. Here both
// kernels read the rows in place. Vectorised over 16 channels; work items are ranges of
// windows (the forward's in order of their first row, so overlapping windows reuse cached
// rows); the gradient's partial sums are added in item order, so results do not depend on the
// thread count or scheduling.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using esort::kLanes;
using esort::load_lanes;
using esort::store;
using esort::store_lanes;
using esort::v16;

struct Windows {
  const float* rows;
  int64_t num_rows, channels;
  const int32_t* starts;
  int64_t batch, window, row_stride;
  const int64_t* order;  // the order work items visit windows in (see `describe`)
  const float* row(int64_t b, int64_t w) const {
    return rows + (static_cast<int64_t>(starts[b]) + w * row_stride) * channels;
  }
};

// Every window must lie inside the rows (XLA's gather would clamp silently).
ffi::Error check_windows(const Windows& x, const char* name) {
  for (int64_t b = 0; b < x.batch; ++b) {
    const int64_t first = x.starts[b], last = first + (x.window - 1) * x.row_stride;
    if (first < 0 || last >= x.num_rows)
      return ffi::Error::InvalidArgument(std::string(name) + ": a window lies outside the rows");
  }
  return ffi::Error::Success();
}

// Work items are ranges of windows: a window's W rows are one contiguous block of the traces
// (W * C floats, 92 KB at 60 x 384), read front to back and reused from cache across the
// channel tiles, so the traces stream from memory once.
constexpr int64_t kBatchParts = 16;

// Window b's rows for channels [c0, c0 + 16) when fewer than 16 remain: copied, zero-padded,
// into `slab` (row stride 16), so the hot loops below only ever do full 16-lane loads.
inline const float* tail_rows(const Windows& x, int64_t b, int64_t c0, float* slab) {
  const int lanes = static_cast<int>(x.channels - c0);
  for (int64_t w = 0; w < x.window; ++w) {
    std::memset(slab + w * kLanes, 0, sizeof(float) * kLanes);
    std::memcpy(slab + w * kLanes, x.row(b, w) + c0, sizeof(float) * lanes);
  }
  return slab;
}

// h[:, b, c0:c0+16] from the window's rows xs (row stride `stride`).
// `ahead`: the same tile of the next window, prefetched meanwhile (nullptr: none).
template <int F>
inline void forward_tile(const float* xs, int64_t stride, int64_t window, const float* k, v16 (&acc)[F],
                         const float* ahead) {
  for (int f = 0; f < F; ++f) acc[f] = v16{};
  for (int64_t w = 0; w < window; ++w) {
    if (ahead) __builtin_prefetch(ahead + w * stride);
    const v16 xv = esort::load(xs + w * stride);
    const float* kw = k + w * F;
    for (int f = 0; f < F; ++f) acc[f] += xv * kw[f];
  }
}

template <int F>
void forward_item(const Windows& x, const float* k, float* h, int64_t b0, int64_t b1) {
  const int64_t plane = x.batch * x.channels;  // h[f] stride
  const int64_t full = x.channels / kLanes * kLanes;
  std::vector<float> slab(static_cast<size_t>(x.window * kLanes));
  for (int64_t p = b0; p < b1; ++p) {
    const int64_t b = x.order[p];
    const float* first = x.row(b, 0);
    const int64_t stride = x.row_stride * x.channels;
    float* hb = h + b * x.channels;
    const float* next = p + 1 < b1 ? x.row(x.order[p + 1], 0) : nullptr;
    for (int64_t c0 = 0; c0 < full; c0 += kLanes) {
      v16 acc[F];
      forward_tile<F>(first + c0, stride, x.window, k, acc, next ? next + c0 : nullptr);
      for (int f = 0; f < F; ++f) store(hb + f * plane + c0, acc[f]);
    }
    if (full < x.channels) {
      v16 acc[F];
      forward_tile<F>(tail_rows(x, b, full, slab.data()), kLanes, x.window, k, acc, nullptr);
      for (int f = 0; f < F; ++f) store_lanes(hb + f * plane + full, acc[f], static_cast<int>(x.channels - full));
    }
  }
}

// acc[i][f] += Σ over one 16-channel tile of rows xs[w0 + i] · g[f] (g rows `gstride` apart).
template <int F, int NW>
inline void gradient_tile(const float* xs, int64_t stride, int64_t w0, const float* gs, int64_t gstride,
                          v16 (&acc)[NW][F], const float* ahead) {
  for (int i = 0; i < NW; ++i) {
    if (ahead) __builtin_prefetch(ahead + (w0 + i) * stride);
    const v16 xv = esort::load(xs + (w0 + i) * stride);
    for (int f = 0; f < F; ++f) acc[i][f] += xv * esort::load(gs + f * gstride);
  }
}

template <int F, int NW>
inline void gradient_block(const Windows& x, int64_t b, int64_t w0, const float* gb, int64_t plane,
                           const float* x_tail, const float* g_tail, v16* out, const float* next) {
  const int64_t full = x.channels / kLanes * kLanes;
  const float* first = x.row(b, 0);
  const int64_t stride = x.row_stride * x.channels;
  v16 acc[NW][F];
  for (int i = 0; i < NW; ++i)
    for (int f = 0; f < F; ++f) acc[i][f] = v16{};
  for (int64_t c0 = 0; c0 < full; c0 += kLanes)
    gradient_tile<F, NW>(first + c0, stride, w0, gb + c0, plane, acc, nullptr);
  if (full < x.channels) gradient_tile<F, NW>(x_tail, kLanes, w0, g_tail, kLanes, acc, nullptr);
  for (int i = 0; i < NW; ++i)
    for (int f = 0; f < F; ++f) out[(w0 + i) * F + f] += acc[i][f];
}

// Partial dk of windows [b0, b1): out[w * F + f], 16 lanes each (summed over channel tiles).
// Per window and block of WB samples: WB * F accumulators in registers over all channel
// tiles; the block's rows are contiguous and the window's g[:, b, :] stays in L1.
template <int F>
void gradient_item(const Windows& x, const float* g, v16* out, int64_t b0, int64_t b1) {
  constexpr int WB = F <= 4 ? 6 : (F <= 8 ? 3 : 1);
  const int64_t plane = x.batch * x.channels;
  const int64_t full = x.channels / kLanes * kLanes;
  const int tail = static_cast<int>(x.channels - full);
  std::vector<float> x_tail(static_cast<size_t>(x.window * kLanes)), g_tail(F * kLanes);
  for (int64_t j = 0; j < x.window * F; ++j) out[j] = v16{};
  for (int64_t p = b0; p < b1; ++p) {
    const int64_t b = x.order[p];
    const float* gb = g + b * x.channels;
    if (tail) {
      tail_rows(x, b, full, x_tail.data());
      for (int f = 0; f < F; ++f) {
        std::memset(g_tail.data() + f * kLanes, 0, sizeof(float) * kLanes);
        std::memcpy(g_tail.data() + f * kLanes, gb + f * plane + full, sizeof(float) * tail);
      }
    }
    const float* next = nullptr;  // (prefetching the next window here measured slower)
    int64_t w0 = 0;
    for (; w0 + WB <= x.window; w0 += WB)
      gradient_block<F, WB>(x, b, w0, gb, plane, x_tail.data(), g_tail.data(), out, next);
    for (; w0 < x.window; ++w0)
      gradient_block<F, 1>(x, b, w0, gb, plane, x_tail.data(), g_tail.data(), out, next);
  }
}

using ForwardItem = void (*)(const Windows&, const float*, float*, int64_t, int64_t);
using GradientItem = void (*)(const Windows&, const float*, v16*, int64_t, int64_t);

// The compiled feature counts (keep in sync with WINDOW_DENSE_FEATURES in __init__.py).
template <typename Item, template <int> class Pick>
Item for_features(int64_t features) {
  switch (features) {
    case 2: return Pick<2>::value;
    case 4: return Pick<4>::value;
    case 8: return Pick<8>::value;
    case 16: return Pick<16>::value;
    default: return nullptr;
  }
}
template <int F> struct PickForward { static constexpr ForwardItem value = &forward_item<F>; };
template <int F> struct PickGradient { static constexpr GradientItem value = &gradient_item<F>; };

// `by_first_row`: visit windows in order of their first row (the forward, whose outputs are per
// window, so the order changes no bit); else in batch order (the gradient, whose summation
// order then does not depend on where the windows come from: the resident traces and a
// gathered [W, B, C] array give the same bits).
Windows describe(const ffi::Buffer<ffi::F32>& rows, const ffi::Buffer<ffi::S32>& starts, int64_t window,
                 int64_t row_stride, bool by_first_row, std::vector<int64_t>& order) {
  const int32_t* s = starts.typed_data();
  order.resize(starts.element_count());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  if (by_first_row)
    std::stable_sort(order.begin(), order.end(), [s](int64_t a, int64_t b) { return s[a] < s[b]; });
  Windows x;
  x.order = order.data();
  x.rows = rows.typed_data();
  x.num_rows = rows.dimensions()[0];
  x.channels = rows.dimensions()[1];
  x.starts = starts.typed_data();
  x.batch = static_cast<int64_t>(starts.element_count());
  x.window = window;
  x.row_stride = row_stride;
  return x;
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> rows, ffi::Buffer<ffi::S32> starts,
                       ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> h, int64_t row_stride) {
  const auto kd = kernel.dimensions(), hd = h->dimensions();
  if (rows.dimensions().size() != 2 || kd.size() != 2 || hd.size() != 3)
    return ffi::Error::InvalidArgument("esort window dense: rows [R, C], kernel [W, F], out [F, B, C]");
  std::vector<int64_t> order;
  const Windows x = describe(rows, starts, kd[0], row_stride, /*by_first_row=*/true, order);
  const int64_t features = kd[1];
  if (hd[0] != features || hd[1] != x.batch || hd[2] != x.channels)
    return ffi::Error::InvalidArgument("esort window dense: inconsistent shapes");
  if (auto error = check_windows(x, "esort window dense"); error.failure()) return error;
  const ForwardItem item = for_features<ForwardItem, PickForward>(features);
  if (item == nullptr)
    return ffi::Error::InvalidArgument("esort window dense: no kernel for this feature count");
  const float* k = kernel.typed_data();
  float* out = h->typed_data();
  const int64_t parts = std::min(kBatchParts, x.batch);
  esort::parallel_for(pool, parts, [&](int64_t i) {
    item(x, k, out, x.batch * i / parts, x.batch * (i + 1) / parts);
  });
  return ffi::Error::Success();
}

ffi::Error GradientImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> rows, ffi::Buffer<ffi::S32> starts,
                        ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dk, int64_t row_stride) {
  const auto gd = g.dimensions(), dd = dk->dimensions();
  if (rows.dimensions().size() != 2 || gd.size() != 3 || dd.size() != 2)
    return ffi::Error::InvalidArgument("esort window dense grad: rows [R, C], g [F, B, C], out [W, F]");
  std::vector<int64_t> order;
  const Windows x = describe(rows, starts, dd[0], row_stride, /*by_first_row=*/false, order);
  const int64_t features = dd[1];
  if (gd[0] != features || gd[1] != x.batch || gd[2] != x.channels)
    return ffi::Error::InvalidArgument("esort window dense grad: inconsistent shapes");
  if (auto error = check_windows(x, "esort window dense grad"); error.failure()) return error;
  const GradientItem item = for_features<GradientItem, PickGradient>(features);
  if (item == nullptr)
    return ffi::Error::InvalidArgument("esort window dense grad: no kernel for this feature count");
  const int64_t items = std::min(kBatchParts, x.batch), per_item = x.window * features;
  std::vector<v16> partial(static_cast<size_t>(items * per_item));
  esort::parallel_for(pool, items, [&](int64_t i) {
    item(x, g.typed_data(), partial.data() + i * per_item, x.batch * i / items, x.batch * (i + 1) / items);
  });
  float* out = dk->typed_data();
  for (int64_t j = 0; j < per_item; ++j) out[j] = esort::sum_items_and_lanes(partial.data(), items, per_item, j);
  return ffi::Error::Success();
}

}  // namespace

extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* EsortWindowDense(XLA_FFI_CallFrame*);
extern "C" __attribute__((visibility("default"))) XLA_FFI_Error* EsortWindowDenseGrad(XLA_FFI_CallFrame*);

XLA_FFI_DEFINE_HANDLER_SYMBOL(EsortWindowDense, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // rows [R, C]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // starts [B]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // kernel [W, F]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // h [F, B, C]
                                  .Attr<int64_t>("row_stride"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(EsortWindowDenseGrad, GradientImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // rows [R, C]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // starts [B]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g [F, B, C]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dk [W, F]
                                  .Attr<int64_t>("row_stride"));
