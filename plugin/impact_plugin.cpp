// elastix-bridge IMPACT plugin: TorchScript feature models and layer distances.
//
// Built at run time by elastix_bridge.runtime.loader with torch.utils.cpp_extension.load against the
// *installed* torch (extension name `elastix_bridge_impact`), so it always matches that torch's
// ABI. Everything lives in anonymous namespaces (the B-spline kernels in bspline_kernels.cpp):
// no torch type leaks into a header, and two copies of the library loaded in one process do not clash in
// pybind11's type registry (classes are also `py::module_local`).
//
// Semantics follow docs/design.md Part I (§I0–§I13):
//   §I3.1 loading, §I3.2 calling convention, §I3.3 list output, §I3.5 dtype,
//   §I7 distances (values only; gradients come from autograd, which also makes NCC's Jacobian-mode
//   gradient exact instead of upstream's batch-local one, §I7.8).

#include "bspline_kernels.h"

#include <torch/extension.h>
#include <torch/script.h>
#include <torch/version.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

const std::vector<std::string>& distance_names() {
  // Factory names of upstream's losses, case-sensitive (docs/design.md §I7.1), in the order of the Python list
  // elastix_bridge.core.impact_parameters.DISTANCES, which validates maps before this plugin is loaded;
  // tests/test_plugin.py checks that distances() equals it.
  static const std::vector<std::string> names = {"L1",       "L2",         "NCC", "Cosine",
                                                 "L1Cosine", "DotProduct", "Dice"};
  return names;
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::ostringstream out;
  for (size_t i = 0; i < items.size(); ++i) out << (i ? sep : "") << items[i];
  return out.str();
}

std::string shape_of(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::ostringstream out;
  out << t.sizes() << " " << c10::toString(t.scalar_type()) << " on " << t.device();
  return out.str();
}

// Torch exceptions carry a C++ backtrace that is noise for users; keep only the message.
std::string torch_message(const std::exception& e) {
  if (auto* ce = dynamic_cast<const c10::Error*>(&e)) return ce->what_without_backtrace();
  return e.what();
}

c10::Device parse_device(const std::string& device) {
  try {
    return c10::Device(device);
  } catch (const std::exception& e) {
    throw std::invalid_argument("invalid device '" + device + "' (expected 'cpu' or 'cuda:<index>'): " +
                                torch_message(e));
  }
}

// ---------------------------------------------------------------------------------------------
// FeatureModel (docs/design.md §I3.1–§I3.5)
// ---------------------------------------------------------------------------------------------

class FeatureModel {
 public:
  FeatureModel(const std::string& path, const std::string& device, bool half)
      : path_(path), device_(parse_device(device)), dtype_(half ? at::kHalf : at::kFloat) {
    if (!std::ifstream(path).good()) {
      throw std::invalid_argument("TorchScript model file '" + path + "' does not exist or cannot be read");
    }
    try {
      module_ = torch::jit::load(path, c10::Device(c10::kCPU));  // §I3.1: always onto the CPU first
    } catch (const std::exception& e) {
      throw std::invalid_argument("cannot load '" + path + "' as a TorchScript model: " + torch_message(e) +
                                  " (save models with torch.jit.script(model).save(path))");
    }
    auto method = module_.find_method("forward");
    if (!method) {
      throw std::invalid_argument("TorchScript model '" + path + "' has no forward method");
    }
    // §I3.2: schema arguments minus `self`.
    num_args_ = static_cast<int64_t>(method->function().getSchema().arguments().size()) - 1;
    if (num_args_ <= 0) {
      throw std::invalid_argument("TorchScript model '" + path +
                                  "': forward takes no argument; it must take the image patch as its first "
                                  "argument (convention: forward(x), forward(x, n_layers) or "
                                  "forward(x, n_layers, stats, direction))");
    }
    module_.eval();
    // §I3.1/§I3.5: only floating parameters/buffers change dtype (integer buffers such as
    // BatchNorm's num_batches_tracked must stay integral). Module::to(dtype) would cast all.
    {
      torch::NoGradGuard no_grad;
      for (at::Tensor p : module_.parameters()) {
        if (p.is_floating_point()) p.set_data(p.to(dtype_));
      }
      for (at::Tensor b : module_.buffers()) {
        if (b.is_floating_point()) b.set_data(b.to(dtype_));
      }
    }
    try {
      module_.to(device_);
      // Only gradients with respect to the input patch are ever taken (§I3.4): frozen weights keep
      // autograd from recording weight-gradient paths in Jacobian mode.
      for (at::Tensor p : module_.parameters()) p.requires_grad_(false);
    } catch (const std::exception& e) {
      throw std::runtime_error("cannot move TorchScript model '" + path + "' to device " + device_.str() + ": " +
                               torch_message(e));
    }
  }

  int64_t num_arguments() const { return num_args_; }
  std::string path() const { return path_; }
  std::string device() const { return device_.str(); }
  bool half() const { return dtype_ == at::kHalf; }

  // Runs forward with upstream's positional convention (§I3.2) and returns float32 maps (§I3.5).
  // No NoGradGuard here: autograd flows back to `x` whenever the caller has grad mode on.
  std::vector<at::Tensor> forward(const at::Tensor& x, int64_t n_layers, const at::Tensor& stats,
                                  const at::Tensor& direction) {
    if (!x.defined() || !x.is_floating_point()) {
      throw std::invalid_argument("model input must be a floating tensor [B, C, *spatial], got " + shape_of(x));
    }
    std::vector<c10::IValue> inputs;
    inputs.reserve(4);
    inputs.emplace_back(x.to(device_, dtype_));
    if (num_args_ >= 2) {
      // 0-d int16 CPU tensor holding the layers-mask length.
      inputs.emplace_back(at::scalar_tensor(n_layers, at::TensorOptions().dtype(at::kShort)));
    }
    if (num_args_ >= 4) {
      if (!stats.defined() || stats.numel() != 4) {
        throw std::invalid_argument("stats must hold 4 values [min, max, mean, sigma], got " + shape_of(stats));
      }
      if (!direction.defined() || direction.dim() != 2 || direction.size(0) != direction.size(1)) {
        throw std::invalid_argument("direction must be a square [D, D] matrix, got " + shape_of(direction));
      }
      // Extra tensors stay on the CPU even when the model runs on CUDA (upstream behaviour).
      inputs.emplace_back(stats.detach().reshape({4}).to(at::kCPU, at::kFloat).contiguous());
      // Floating direction cosines are rounded half away from zero (§I3.2); at::round would
      // round half to even and a plain cast would truncate.
      at::Tensor dir = direction.detach().to(at::kCPU);
      if (dir.is_floating_point()) dir = dir.sign() * (dir.abs() + 0.5).floor();
      inputs.emplace_back(dir.to(at::kShort).contiguous());
    }

    c10::IValue out;
    try {
      out = module_.forward(inputs);
    } catch (const std::exception& e) {
      std::ostringstream msg;
      msg << "forward of TorchScript model '" << path_ << "' failed for input " << shape_of(x) << " (passed as "
          << c10::toString(dtype_) << " on " << device_ << ", " << inputs.size() << " of " << num_args_
          << " arguments): " << torch_message(e);
      throw std::runtime_error(msg.str());
    }

    const std::string expected = "; the model must return a list of feature maps [B, C, *spatial] (List[Tensor])";
    if (!out.isList()) {
      std::string got = out.isTuple()    ? "a tuple of " + std::to_string(out.toTupleRef().elements().size()) +
                                               " elements"
                        : out.isTensor() ? "a single tensor " + shape_of(out.toTensor())
                                         : "a value of type " + out.type()->str();
      throw std::runtime_error("TorchScript model '" + path_ + "' returned " + got + expected);
    }
    auto list = out.toList();
    std::vector<at::Tensor> result;
    result.reserve(list.size());
    for (size_t i = 0; i < list.size(); ++i) {
      c10::IValue item = list.get(i);
      if (!item.isTensor()) {
        throw std::runtime_error("TorchScript model '" + path_ + "' returned a list whose element " +
                                 std::to_string(i) + " is a " + item.type()->str() + expected);
      }
      result.push_back(item.toTensor().to(at::kFloat));
    }
    return result;
  }

 private:
  std::string path_;
  c10::Device device_;
  at::ScalarType dtype_;
  torch::jit::Module module_;
  int64_t num_args_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Distances (docs/design.md §I7). f, m: [N, K]; every per-sample quantity is a row reduction.
// ---------------------------------------------------------------------------------------------

at::Tensor cosine_rows(const at::Tensor& f, const at::Tensor& m) {
  // No epsilon, as upstream (§I7.5): zero vectors give NaN/Inf.
  return (f * m).sum(1) / (f.norm(2, {1}) * m.norm(2, {1}));
}

at::Tensor layer_value(const std::string& distance, const at::Tensor& fixed, const at::Tensor& moving) {
  const auto& names = distance_names();
  if (std::find(names.begin(), names.end(), distance) == names.end()) {
    throw std::invalid_argument("unknown Impact distance '" + distance + "'; valid names (case-sensitive): " +
                                join(names, ", "));
  }
  if (!fixed.defined() || !moving.defined() || fixed.dim() != 2 || fixed.sizes() != moving.sizes()) {
    throw std::invalid_argument("layer_value expects fixed and moving features of the same shape [N, K], got " +
                                shape_of(fixed) + " and " + shape_of(moving));
  }
  if (fixed.device() != moving.device()) {
    throw std::invalid_argument("fixed and moving features are on different devices: " + shape_of(fixed) +
                                " and " + shape_of(moving));
  }
  // Dtype-agnostic (float64 for gradcheck); integer inputs are promoted to float32.
  auto dtype = at::promote_types(fixed.scalar_type(), moving.scalar_type());
  if (!at::isFloatingType(dtype)) dtype = at::kFloat;
  const at::Tensor f = fixed.to(dtype);
  const at::Tensor m = moving.to(dtype);

  if (distance == "L1") return (f - m).abs().mean();  // mean over s of (1/K) sum_k == mean over all
  if (distance == "L2") return (f - m).square().mean();
  if (distance == "Cosine") return -cosine_rows(f, m).mean();
  if (distance == "L1Cosine") {
    const double lambda = 0.1;  // §I7.6
    auto e = at::exp(-lambda * (f - m).abs());
    return -(cosine_rows(f, m).unsqueeze(1) * e).mean();
  }
  if (distance == "DotProduct") return -(f * m).sum(1).mean();
  if (distance == "Dice") {
    auto inter = (f * m).sum(1);
    auto uni = (f + m).sum(1);
    // Empty/empty (U == 0 exactly) -> dice = 1 with zero gradient; the denominator is replaced
    // first so no NaN is formed even in the masked-out branch (§I7.4).
    auto empty = uni.eq(0);
    auto safe = at::where(empty, at::ones_like(uni), uni);
    auto dice = at::where(empty, at::ones_like(uni), 2 * inter / safe);
    return -dice.mean();
  }
  // NCC (§I7.8): global per-channel statistics over all N samples. Centred sums are algebraically
  // identical to upstream's S_fm - S_f S_m / N form but avoid float32 cancellation.
  const int64_t n = f.size(0);
  if (n <= 0) return at::zeros({}, f.options());
  auto fc = f - f.mean(0, /*keepdim=*/true);
  auto mc = m - m.mean(0, /*keepdim=*/true);
  auto u = (fc * mc).sum(0);
  auto v = at::sqrt(fc.square().sum(0)) * at::sqrt(mc.square().sum(0));
  return -(u / v).mean();
}

// Static mode, one layer (docs/design.md §I6.5, §I7): both reads in one parallel pass, the channel
// subset, the distance in float32 and its derivative by autograd on the (N, K) features only, and
// the chain rule to the moving points' continuous indices, so Python sees one call per layer.
std::vector<at::Tensor> static_layer(const std::string& distance, const at::Tensor& fixed_coef,
                                     const std::vector<int64_t>& fixed_size_xyz, const at::Tensor& fixed_index,
                                     const at::Tensor& moving_coef, const std::vector<int64_t>& moving_size_xyz,
                                     const at::Tensor& moving_index, int64_t order, const at::Tensor& channels) {
  auto read = bspline_read_pair(fixed_coef, fixed_size_xyz, fixed_index, moving_coef, moving_size_xyz, moving_index,
                                order);
  at::Tensor f = read[0], m = read[1], dm = read[2];
  if (channels.defined() && channels.numel() > 0) {
    f = f.index_select(1, channels), m = m.index_select(1, channels), dm = dm.index_select(1, channels);
  }
  at::AutoGradMode grad_mode(true);
  at::Tensor moving = m.to(at::kFloat).requires_grad_(true);
  at::Tensor value = layer_value(distance, f.to(at::kFloat), moving);
  at::Tensor grad = torch::autograd::grad({value}, {moving})[0];
  // d value / d index = sum over channels of d value / d m_k * d m_k / d index, in float64.
  at::Tensor grad_index = at::bmm(grad.to(at::kDouble).unsqueeze(1), dm).squeeze(1);
  return {value.detach(), grad_index};
}

py::dict build_info() {
  py::dict d;
  d["torch_version"] = std::string(TORCH_VERSION);
#if defined(_GLIBCXX_USE_CXX11_ABI)
  d["cxx11_abi"] = static_cast<bool>(_GLIBCXX_USE_CXX11_ABI);
#else
  d["cxx11_abi"] = false;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "elastix-bridge IMPACT plugin: TorchScript feature models and IMPACT distances (docs/design.md §I3, §I7)";

  py::class_<FeatureModel>(m, "FeatureModel", py::module_local(), R"doc(
TorchScript feature extractor called with upstream's convention (docs/design.md §I3.1–§I3.5).

Args:
    path: TorchScript archive; loaded on the CPU, eval(), floating weights cast, then moved.
    device: "cpu" or "cuda:<index>".
    half: cast floating weights and inputs to float16 ("mixed precision", §I3.5).

Raises:
    ValueError: missing/unloadable file, no forward, forward without arguments, bad device.
    RuntimeError: the model cannot be moved to the device.
)doc")
      .def(py::init<const std::string&, const std::string&, bool>(), py::arg("path"), py::arg("device") = "cpu",
           py::arg("half") = false)
      .def_property_readonly("num_arguments", &FeatureModel::num_arguments,
                             "Number of forward schema arguments minus self (§I3.2).")
      .def_property_readonly("path", &FeatureModel::path)
      .def_property_readonly("device", &FeatureModel::device)
      .def_property_readonly("half", &FeatureModel::half)
      .def("forward", &FeatureModel::forward, py::arg("x"), py::arg("n_layers"), py::arg("stats"),
           py::arg("direction"), py::call_guard<py::gil_scoped_release>(), R"doc(
Run the model: forward(x[, n_layers int16 0-d][, stats float32[4], direction int16[D, D]]).

Args:
    x: patch/tile [B, C, *spatial]; cast to the model dtype and device (differentiable).
    n_layers: layers-mask length, passed when num_arguments >= 2.
    stats: [min, max, mean, sigma] of the level image, passed when num_arguments >= 4.
    direction: direction cosines [D, D], passed when num_arguments >= 4 as int16; floating
        values are rounded half away from zero first.

Returns:
    list of float32 tensors [B, F_i, *spatial_i], on the model device, connected to x's graph.

Raises:
    RuntimeError: forward failed, or the result is not a list of tensors.
    ValueError: bad x/stats/direction.
)doc");

  m.def("layer_value", &layer_value, py::arg("distance"), py::arg("fixed"), py::arg("moving"),
        py::call_guard<py::gil_scoped_release>(), R"doc(
Value of one IMPACT distance for one layer (docs/design.md §I7), differentiable with autograd.

Args:
    distance: one of distances() (case-sensitive).
    fixed, moving: features [N, K] (samples x channels), any floating dtype, same device.

Returns:
    0-d tensor (dtype of the promoted inputs). L1/L2 are *not* normalised by α here (§I7.9).

Raises:
    ValueError: unknown distance or mismatched shapes/devices.
)doc");
  m.def("static_layer", &static_layer, py::arg("distance"), py::arg("fixed_coefficients"),
        py::arg("fixed_size_xyz"), py::arg("fixed_index"), py::arg("moving_coefficients"),
        py::arg("moving_size_xyz"), py::arg("moving_index"), py::arg("order"), py::arg("channels"),
        py::call_guard<py::gil_scoped_release>(), R"doc(
One Static-mode layer's value and its derivative with respect to the moving indices (docs/design.md §I6.5).

Equals reading the fixed map at fixed_index and the moving map at moving_index (bspline_evaluate),
keeping `channels`, and layer_value(distance, fixed, moving) in float32 differentiated by autograd.

Args:
    distance: one of distances().
    fixed_coefficients, moving_coefficients: (P, C) B-spline coefficients (float32/float64, CPU).
    fixed_size_xyz, moving_size_xyz: their grid sizes, ITK (x, y, z) order.
    fixed_index, moving_index: (N, D) float64 continuous indices, ITK order.
    order: the maps' spline order (0..3).
    channels: (K,) int64 channel subset, or an empty tensor for all channels.

Returns:
    [value (0-d float32), d value / d moving_index (N, D) float64].

Raises:
    ValueError: bad shapes, dtypes, order or distance.
)doc");
  m.def("distances", []() { return distance_names(); }, "Valid distance names (docs/design.md §I7.1).");
  register_bspline_kernels(m);
  m.def("build_info", &build_info, "torch_version and cxx11_abi of the torch headers this plugin was compiled against.");
}
