// B-spline evaluation kernels of the bridge engine (CPU): image interpolation and B-spline
// transforms at many points, with index-space derivatives and the adjoint (scatter) that gives
// the gradient with respect to the coefficients.
//
// Why here: the Jacobian mode of IMPACT interpolates (patch points x samples), i.e. hundreds of
// thousands of points per iteration; in plain torch every point materialises its (order+1)^D
// support, which costs several times the feature model itself. These loops touch each support
// value once and keep nothing. The torch implementations in elastix_bridge/engine stay the
// reference (and the path for non-CPU tensors); tests compare the two.
//
// Conventions (docs/design.md §E6.4, §E8.1): coefficients are (P, C) with P the grid flattened in
// (z, y, x) order, x fastest; continuous indices are (N, D) in ITK (x, y, z) order. For order o,
// half = (o-1)/2, start = floor(x - half) (images: of x rounded to float, as ITK), t = x - half -
// start and the o+1 weights are the centred B-spline at t + half - k. Two boundary modes:
//   image:     ITK BSplineInterpolateImageFunction, periodic mirror of the index (period 2n-2);
//   transform: ITK AdvancedBSplineDeformableTransform, zero unless half <= x < n - 1 - half on
//              every axis.

#include "bspline_kernels.h"

#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace {

constexpr int kMaxSupport = 4;  // order 3

template <typename T>
struct Axis {
  int n = 1;                  // support size along this axis
  int64_t offset[kMaxSupport] = {0, 0, 0, 0};  // flat offsets (index * stride)
  T w[kMaxSupport] = {1, 0, 0, 0};
  T dw[kMaxSupport] = {0, 0, 0, 0};
};

template <typename T>
inline void weights(T t, int order, T* w, T* dw) {
  switch (order) {
    case 0:
      w[0] = 1;
      dw[0] = 0;
      break;
    case 1:
      w[0] = 1 - t, w[1] = t;
      dw[0] = -1, dw[1] = 1;
      break;
    case 2: {
      const T s = 1 - t, h = t - T(0.5);
      w[0] = T(0.5) * s * s, w[1] = T(0.75) - h * h, w[2] = T(0.5) * t * t;
      dw[0] = -s, dw[1] = -2 * h, dw[2] = t;
      break;
    }
    default: {
      const T s = 1 - t, t2 = t * t;
      w[0] = s * s * s / 6;
      w[1] = (3 * t2 * t - 6 * t2 + 4) / 6;
      w[2] = (-3 * t2 * t + 3 * t2 + 3 * t + 1) / 6;
      w[3] = t2 * t / 6;
      dw[0] = -T(0.5) * s * s;
      dw[1] = T(1.5) * t2 - 2 * t;
      dw[2] = -T(1.5) * t2 + t + T(0.5);
      dw[3] = T(0.5) * t2;
    }
  }
}

inline int64_t mirror(int64_t i, int64_t n) {
  if (i >= 0 && i < n) return i;  // the common case, without the division
  if (n == 1) return 0;
  const int64_t period = 2 * n - 2;
  int64_t m = (i < 0 ? -i : i) % period;
  return m >= n ? period - m : m;
}

// Support of one point along one axis; false when a transform point is outside the valid region.
template <typename T>
inline bool axis_support(T x, int order, int64_t n, int64_t stride, bool transform, Axis<T>& a) {
  const T half = T(order - 1) / 2;
  if (transform && !(x >= half && x < T(n - 1) - half)) return false;
  int64_t start;
  if (transform) {
    start = static_cast<int64_t>(std::floor(x - half));
  } else {
    // ITK's BSplineInterpolateImageFunction finds the support from the index cast to float
    // (floor((float)x + halfOffset) - order/2), which decides the side of the derivative at knots.
    const double half_offset = (order & 1) ? 0.0 : 0.5;
    start = static_cast<int64_t>(std::floor(static_cast<double>(static_cast<float>(x)) + half_offset)) - order / 2;
  }
  weights<T>(x - half - T(start), order, a.w, a.dw);
  a.n = order + 1;
  for (int k = 0; k < a.n; ++k) a.offset[k] = (transform ? start + k : mirror(start + k, n)) * stride;
  return true;
}

struct Layout {
  int dim;
  int64_t size[3];
  int64_t stride[3];
  int64_t points;
  int64_t channels;
  int order;
  bool transform;
};

Layout check(const at::Tensor& coef, const std::vector<int64_t>& size_xyz, const at::Tensor& index, int64_t order,
             const char* what) {
  std::ostringstream err;
  const int dim = static_cast<int>(size_xyz.size());
  if (dim < 1 || dim > 3) err << "size_xyz must have 1 to 3 entries, got " << dim;
  else if (!coef.device().is_cpu() || !index.device().is_cpu()) err << "CPU tensors only";
  else if (coef.dim() != 2 || !coef.is_contiguous()) err << "coefficients must be a contiguous (P, C) tensor";
  else if (index.dim() != 2 || index.size(1) != dim || !index.is_contiguous())
    err << "index must be a contiguous (N, " << dim << ") tensor, got " << index.sizes();
  else if ((coef.scalar_type() != at::kFloat && coef.scalar_type() != at::kDouble) ||
           (index.scalar_type() != at::kFloat && index.scalar_type() != at::kDouble))
    err << "coefficients and index must be float32 or float64";
  else if (order < 0 || order > 3) err << "order must be 0..3, got " << order;
  Layout l{};
  if (err.str().empty()) {
    int64_t p = 1;
    for (int a = 0; a < 3; ++a) {
      l.size[a] = a < dim ? size_xyz[a] : 1;
      l.stride[a] = p;
      p *= l.size[a];
      if (l.size[a] < 1) err << "sizes must be >= 1";
    }
    if (err.str().empty() && p != coef.size(0)) err << "coefficients have " << coef.size(0) << " rows, the grid " << p;
  }
  if (!err.str().empty()) throw std::invalid_argument(std::string(what) + ": " + err.str());
  l.dim = dim;
  l.points = index.size(0);
  l.channels = coef.size(1);
  l.order = static_cast<int>(order);
  return l;
}

template <typename T>
inline bool point_support(const T* x, const Layout& l, Axis<T> (&ax)[3]) {
  for (int a = 0; a < 3; ++a) {
    ax[a] = Axis<T>();
    if (a < l.dim && !axis_support<T>(x[a], l.order, l.size[a], l.stride[a], l.transform, ax[a])) return false;
  }
  return true;
}

// One point with NC channels known at compile time: accumulates in registers, row by row along x
// (the general loop of evaluate_impl reads and writes the output through memory at every tap).
template <typename T, typename TC, int NC>
inline void small_point(const Axis<T> (&ax)[3], const TC* coef, int dim, T* v, T* g) {
  T acc[NC] = {}, gx[NC] = {}, gy[NC] = {}, gz[NC] = {};
  for (int kz = 0; kz < ax[2].n; ++kz)
    for (int ky = 0; ky < ax[1].n; ++ky) {
      const int64_t base = ax[2].offset[kz] + ax[1].offset[ky];
      T row[NC] = {}, drow[NC] = {};
      for (int kx = 0; kx < ax[0].n; ++kx) {
        const TC* c = coef + (base + ax[0].offset[kx]) * NC;
        for (int ch = 0; ch < NC; ++ch) {
          row[ch] += ax[0].w[kx] * T(c[ch]);
          if (g) drow[ch] += ax[0].dw[kx] * T(c[ch]);
        }
      }
      const T wzy = ax[2].w[kz] * ax[1].w[ky];
      for (int ch = 0; ch < NC; ++ch) {
        acc[ch] += wzy * row[ch];
        if (g) {
          gx[ch] += wzy * drow[ch];
          gy[ch] += ax[2].w[kz] * ax[1].dw[ky] * row[ch];
          gz[ch] += ax[2].dw[kz] * ax[1].w[ky] * row[ch];
        }
      }
    }
  for (int ch = 0; ch < NC; ++ch) {
    v[ch] = acc[ch];
    if (g) {
      const T d[3] = {gx[ch], gy[ch], gz[ch]};
      for (int a = 0; a < dim; ++a) g[ch * dim + a] = d[a];
    }
  }
}

// One point's values (and index gradients) from its support; v and g are zeroed first.
template <typename T, typename TC>
inline void evaluate_point(const Layout& l, const Axis<T> (&ax)[3], const TC* coef, T* v, T* g) {
  const int64_t C = l.channels;
  switch (C) {  // compile-time channel counts: scalar images, transforms (C = D), MIND-SSC (4, 12), subsets
    case 1: return small_point<T, TC, 1>(ax, coef, l.dim, v, g);
    case 2: return small_point<T, TC, 2>(ax, coef, l.dim, v, g);
    case 3: return small_point<T, TC, 3>(ax, coef, l.dim, v, g);
    case 4: return small_point<T, TC, 4>(ax, coef, l.dim, v, g);
    case 8: return small_point<T, TC, 8>(ax, coef, l.dim, v, g);
    case 12: return small_point<T, TC, 12>(ax, coef, l.dim, v, g);
    case 16: return small_point<T, TC, 16>(ax, coef, l.dim, v, g);
    case 32: return small_point<T, TC, 32>(ax, coef, l.dim, v, g);
    default: break;
  }
  std::fill(v, v + C, T(0));
  if (g) std::fill(g, g + C * l.dim, T(0));
  for (int kz = 0; kz < ax[2].n; ++kz) {
    for (int ky = 0; ky < ax[1].n; ++ky) {
      const T wzy = ax[2].w[kz] * ax[1].w[ky];
      const int64_t base = ax[2].offset[kz] + ax[1].offset[ky];
      for (int kx = 0; kx < ax[0].n; ++kx) {
        const TC* c = coef + (base + ax[0].offset[kx]) * C;
        const T w = wzy * ax[0].w[kx];
        for (int64_t ch = 0; ch < C; ++ch) v[ch] += w * T(c[ch]);
        if (g) {
          const T d[3] = {ax[0].dw[kx] * ax[1].w[ky] * ax[2].w[kz], ax[0].w[kx] * ax[1].dw[ky] * ax[2].w[kz],
                          ax[0].w[kx] * ax[1].w[ky] * ax[2].dw[kz]};
          for (int64_t ch = 0; ch < C; ++ch)
            for (int a = 0; a < l.dim; ++a) g[ch * l.dim + a] += d[a] * T(c[ch]);
        }
      }
    }
  }
}

// A point outside a transform's valid region has value and gradient zero.
template <typename T, typename TC>
inline void evaluate_at(const Layout& l, const TC* coef, const T* index, T* v, T* g) {
  Axis<T> ax[3];
  if (point_support<T>(index, l, ax)) return evaluate_point<T, TC>(l, ax, coef, v, g);
  std::fill(v, v + l.channels, T(0));
  if (g) std::fill(g, g + l.channels * l.dim, T(0));
}

// A task holds at least ~64k multiply-adds: waking a thread for less costs more than it saves
// (a scalar moving image at 2000 samples stays on one thread; 12-channel cubic maps do not).
inline int64_t grain_of(const Layout& l) {
  int64_t support = 1;
  for (int a = 0; a < l.dim; ++a) support *= l.order + 1;
  return std::max<int64_t>(256, 65536 / std::max<int64_t>(1, support * l.channels));
}

// T: the points' (and outputs') type; TC: the coefficients' (float32 feature maps are read as T).
template <typename T, typename TC>
void evaluate_impl(const Layout& l, const TC* coef, const T* index, T* values, T* grads) {
  const int64_t C = l.channels;
  at::parallel_for(0, l.points, grain_of(l), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p)
      evaluate_at<T, TC>(l, coef, index + p * l.dim, values + p * C, grads ? grads + p * C * l.dim : nullptr);
  });
}

// Scatter of one point's gradient into its support, with NC channels known at compile time (NC = 0:
// the run-time count C).
template <typename T, int NC>
inline void scatter_point(const Axis<T> (&ax)[3], const T* g, int64_t C, T* out) {
  const int64_t channels = NC > 0 ? NC : C;
  for (int kz = 0; kz < ax[2].n; ++kz)
    for (int ky = 0; ky < ax[1].n; ++ky) {
      const T wzy = ax[2].w[kz] * ax[1].w[ky];
      const int64_t base = ax[2].offset[kz] + ax[1].offset[ky];
      for (int kx = 0; kx < ax[0].n; ++kx) {
        T* o = out + (base + ax[0].offset[kx]) * channels;
        const T w = wzy * ax[0].w[kx];
        for (int64_t ch = 0; ch < channels; ++ch) o[ch] += w * g[ch];
      }
    }
}

template <typename T>
void adjoint_impl(const Layout& l, const T* grad, const T* index, T* out, int64_t rows) {
  const int64_t C = l.channels;
  // Each chunk of points scatters into its own buffer (no atomics); buffers are summed at the end.
  // One chunk (a few thousand points, e.g. a B-spline transform's samples) scatters into `out` itself.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), l.points / 4096));
  std::fill(out, out + rows * C, T(0));
  std::vector<std::vector<T>> buffers(chunks > 1 ? chunks : 0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    Axis<T> ax[3];
    for (int64_t b = begin; b < end; ++b) {
      T* target = out;
      if (chunks > 1) {
        buffers[b].assign(rows * C, T(0));
        target = buffers[b].data();
      }
      const int64_t p0 = l.points * b / chunks, p1 = l.points * (b + 1) / chunks;
      for (int64_t p = p0; p < p1; ++p) {
        if (!point_support<T>(index + p * l.dim, l, ax)) continue;
        const T* g = grad + p * C;
        switch (C) {  // transforms: C = D
          case 1: scatter_point<T, 1>(ax, g, C, target); break;
          case 2: scatter_point<T, 2>(ax, g, C, target); break;
          case 3: scatter_point<T, 3>(ax, g, C, target); break;
          default: scatter_point<T, 0>(ax, g, C, target);
        }
      }
    }
  });
  for (const auto& buf : buffers)
    for (int64_t i = 0; i < rows * C; ++i) out[i] += buf[i];
}

// B-spline prefilter in place (Unser 1999, Box 2; ITK BSplineDecompositionImageFilter) with mirror boundary
// and the exact causal initialisation (the "full loop": every term of the mirrored sum), as
// scipy.ndimage.spline_filter1d(mode="mirror"), the Python reference. One call filters `width` adjacent
// lines at once: element i of line j is c[i * step + j], so the recursions run along i over contiguous
// rows of j (a strided axis is read row by row, not one far-apart element at a time).
template <typename T>
void prefilter_lines(T* c, int64_t n, int64_t step, int64_t width, double z, std::vector<double>& sum) {
  if (n < 2) return;
  const double gain = (1.0 - z) * (1.0 - 1.0 / z);
  auto at = [&](int64_t i) { return c + i * step; };
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < width; ++j) at(i)[j] = static_cast<T>(at(i)[j] * gain);
  const double zn1 = std::pow(z, static_cast<double>(n - 1));
  sum.resize(width);
  for (int64_t j = 0; j < width; ++j) sum[j] = at(0)[j] + zn1 * at(n - 1)[j];
  double zi = z;
  for (int64_t i = 1; i < n - 1; ++i) {
    for (int64_t j = 0; j < width; ++j) sum[j] += zi * (at(i)[j] + zn1 * at(n - 1 - i)[j]);
    zi *= z;
  }
  for (int64_t j = 0; j < width; ++j) at(0)[j] = static_cast<T>(sum[j] / (1.0 - zn1 * zn1));
  for (int64_t i = 1; i < n; ++i)
    for (int64_t j = 0; j < width; ++j) at(i)[j] = static_cast<T>(at(i)[j] + z * at(i - 1)[j]);
  for (int64_t j = 0; j < width; ++j)
    at(n - 1)[j] = static_cast<T>((z * at(n - 2)[j] + at(n - 1)[j]) * z / (z * z - 1.0));
  for (int64_t i = n - 2; i >= 0; --i)
    for (int64_t j = 0; j < width; ++j) at(i)[j] = static_cast<T>(z * (at(i + 1)[j] - at(i)[j]));
}

// Every line along axes [first, last) of a volume, bundles of lines spread over torch's threads:
// (C, *spatial) filters axes 1..; channels-last (*spatial, C) axes ..-1, its channels being adjacent lines.
template <typename T>
void prefilter_impl(T* data, const std::vector<int64_t>& shape, size_t first, size_t last, double z) {
  constexpr int64_t kBundle = 256;  // adjacent lines per bundle along a strided axis
  const int64_t total = std::accumulate(shape.begin(), shape.end(), int64_t(1), std::multiplies<int64_t>());
  for (size_t axis = first; axis < last; ++axis) {
    const int64_t n = shape[axis];
    int64_t stride = 1;
    for (size_t a = axis + 1; a < shape.size(); ++a) stride *= shape[a];
    const int64_t outers = total / (n * stride);
    if (stride == 1) {  // the contiguous axis: one line per task
      at::parallel_for(0, outers, 16, [&](int64_t begin, int64_t end) {
        std::vector<double> sum;
        for (int64_t k = begin; k < end; ++k) prefilter_lines<T>(data + k * n, n, 1, 1, z, sum);
      });
      continue;
    }
    const int64_t blocks = (stride + kBundle - 1) / kBundle;
    at::parallel_for(0, outers * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> sum;
      for (int64_t k = begin; k < end; ++k) {
        const int64_t outer = k / blocks, first = (k % blocks) * kBundle;
        prefilter_lines<T>(data + outer * n * stride + first, n, stride, std::min(kBundle, stride - first), z, sum);
      }
    });
  }
}

at::Tensor bspline_prefilter(const at::Tensor& volume, int64_t order, bool channels_last) {
  if (!volume.device().is_cpu() || volume.dim() < 2 ||
      (volume.scalar_type() != at::kFloat && volume.scalar_type() != at::kDouble))
    throw std::invalid_argument("bspline_prefilter: expected a float32/float64 CPU tensor (C, *spatial), got " +
                                std::string(volume.toString()) + " of " + std::to_string(volume.dim()) + " axes");
  if (order < 2 || order > 3) throw std::invalid_argument("bspline_prefilter: order must be 2 or 3");
  const double z = order == 2 ? std::sqrt(8.0) - 3.0 : std::sqrt(3.0) - 2.0;
  // One copy of the volume: a permuted view (channels-last) is made contiguous once, not copied twice.
  at::Tensor out = volume.is_contiguous() ? volume.clone() : volume.contiguous();
  const std::vector<int64_t> shape(out.sizes().begin(), out.sizes().end());
  const size_t first = channels_last ? 0 : 1, last = channels_last ? shape.size() - 1 : shape.size();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "bspline_prefilter",
                             [&] { prefilter_impl<scalar_t>(out.data_ptr<scalar_t>(), shape, first, last, z); });
  return out;
}

std::vector<at::Tensor> bspline_evaluate(const at::Tensor& coef, const std::vector<int64_t>& size_xyz,
                                         const at::Tensor& points, int64_t order, bool transform, bool with_gradient) {
  Layout l = check(coef, size_xyz, points, order, "bspline_evaluate");
  // Computed in the wider of the two dtypes: float32 feature maps at float64 points stay float64.
  const at::Tensor index = coef.scalar_type() == at::kDouble ? points.to(at::kDouble) : points;
  l.transform = transform;
  at::Tensor values = at::empty({l.points, l.channels}, index.options());
  at::Tensor grads = with_gradient ? at::empty({l.points, l.channels, l.dim}, index.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(index.scalar_type(), "bspline_evaluate", [&] {
    using T = scalar_t;
    T* g = with_gradient ? grads.data_ptr<T>() : nullptr;
    if (coef.scalar_type() == at::kFloat)
      evaluate_impl<T, float>(l, coef.data_ptr<float>(), index.data_ptr<T>(), values.data_ptr<T>(), g);
    else
      evaluate_impl<T, double>(l, coef.data_ptr<double>(), index.data_ptr<T>(), values.data_ptr<T>(), g);
  });
  if (with_gradient) return {values, grads};
  return {values};
}

}  // namespace

std::vector<at::Tensor> bspline_read_pair(const at::Tensor& fixed_coef, const std::vector<int64_t>& fixed_size_xyz,
                                          const at::Tensor& fixed_index, const at::Tensor& moving_coef,
                                          const std::vector<int64_t>& moving_size_xyz, const at::Tensor& moving_index,
                                          int64_t order) {
  Layout lf = check(fixed_coef, fixed_size_xyz, fixed_index, order, "bspline_read_pair (fixed)");
  Layout lm = check(moving_coef, moving_size_xyz, moving_index, order, "bspline_read_pair (moving)");
  if (fixed_coef.scalar_type() != moving_coef.scalar_type() || lf.channels != lm.channels ||
      lf.points != lm.points || fixed_index.scalar_type() != at::kDouble ||
      moving_index.scalar_type() != at::kDouble)
    throw std::invalid_argument("bspline_read_pair: fixed and moving maps need the same dtype and channels, and "
                                "the same number of float64 indices");
  const int64_t n = lf.points, C = lf.channels, D = lm.dim;
  const auto options = fixed_index.options();
  at::Tensor f = at::empty({n, C}, options), m = at::empty({n, C}, options), dm = at::empty({n, C, D}, options);
  double *fv = f.data_ptr<double>(), *mv = m.data_ptr<double>(), *mg = dm.data_ptr<double>();
  const double *fi = fixed_index.data_ptr<double>(), *mi = moving_index.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(fixed_coef.scalar_type(), "bspline_read_pair", [&] {
    const scalar_t *fc = fixed_coef.data_ptr<scalar_t>(), *mc = moving_coef.data_ptr<scalar_t>();
    at::parallel_for(0, n, grain_of(lm) / 2 + 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        evaluate_at<double, scalar_t>(lf, fc, fi + p * lf.dim, fv + p * C, nullptr);
        evaluate_at<double, scalar_t>(lm, mc, mi + p * D, mv + p * C, mg + p * C * D);
      }
    });
  });
  return {f, m, dm};
}

namespace {

at::Tensor bspline_adjoint(const at::Tensor& grad_values, const std::vector<int64_t>& size_xyz,
                           const at::Tensor& index, int64_t order, bool transform) {
  // The grid layout is checked with a zero-size stand-in for the coefficients.
  int64_t rows = 1;
  for (auto s : size_xyz) rows *= s;
  if (grad_values.dim() != 2 || grad_values.size(0) != index.size(0) || !grad_values.is_contiguous())
    throw std::invalid_argument("bspline_adjoint: grad_values must be a contiguous (N, C) tensor matching index");
  if (grad_values.scalar_type() != index.scalar_type())
    throw std::invalid_argument("bspline_adjoint: grad_values and index must have the same dtype; convert "
                                "grad_values to the index's dtype");
  at::Tensor shape_only = at::empty({rows, grad_values.size(1)}, grad_values.options());
  Layout l = check(shape_only, size_xyz, index, order, "bspline_adjoint");
  l.transform = transform;
  AT_DISPATCH_FLOATING_TYPES(grad_values.scalar_type(), "bspline_adjoint", [&] {
    adjoint_impl<scalar_t>(l, grad_values.data_ptr<scalar_t>(), index.data_ptr<scalar_t>(),
                           shape_only.data_ptr<scalar_t>(), rows);
  });
  return shape_only;
}

}  // namespace

void register_bspline_kernels(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("bspline_evaluate", &bspline_evaluate, py::arg("coefficients"), py::arg("size_xyz"), py::arg("index"),
        py::arg("order"), py::arg("transform") = false, py::arg("with_gradient") = false,
        py::call_guard<py::gil_scoped_release>(), R"doc(
B-spline values (and index-space derivatives) at continuous indices (CPU).

Args:
    coefficients: (P, C) float32/float64, P = prod(size_xyz) in (z, y, x) order, x fastest.
    size_xyz: grid size per axis, ITK (x, y, z) order (1 to 3 axes).
    index: (N, D) continuous indices, ITK order, float32/float64. Weights, sums and outputs use the
        wider of the two dtypes (float32 feature maps are read at float64 points without a float64 copy).
    order: spline order 0..3.
    transform: False = image interpolation with mirror boundary (ITK BSplineInterpolateImageFunction);
        True = B-spline transform support, zero outside the valid region (docs/design.md §E6.4).
    with_gradient: also return d value / d index.

Returns:
    [values (N, C)] or [values (N, C), gradients (N, C, D)], in the wider dtype.

Raises:
    ValueError: bad shapes, dtypes, devices or order.
)doc");
  m.def("bspline_prefilter", &bspline_prefilter, py::arg("volume"), py::arg("order"),
        py::arg("channels_last") = false, py::call_guard<py::gil_scoped_release>(), R"doc(
B-spline interpolation coefficients of each channel (mirror boundary; ITK BSplineDecompositionImageFilter).

Args:
    volume: (C, *spatial) float32/float64 CPU tensor, spatial axes in (z, y, x) order; with
        channels_last, (*spatial, C) (a permuted view is fine: it is copied once).
    order: spline order 2 or 3 (orders 0 and 1 need no prefilter).
    channels_last: whether the channel axis is the last one.

Returns:
    A new tensor of the same shape and dtype: each channel filtered along every spatial axis.

Raises:
    ValueError: another device, dtype, shape or order.
)doc");
  m.def("bspline_adjoint", &bspline_adjoint, py::arg("grad_values"), py::arg("size_xyz"), py::arg("index"),
        py::arg("order"), py::arg("transform") = false, py::call_guard<py::gil_scoped_release>(), R"doc(
Adjoint of bspline_evaluate with respect to the coefficients: (P, C) = sum over points of weights x grad.

Args:
    grad_values: (N, C) gradient of a loss with respect to the values.
    size_xyz, index, order, transform: as for bspline_evaluate.

Returns:
    (P, C) gradient with respect to the coefficients (mirrored supports accumulate on their source).
)doc");
}
