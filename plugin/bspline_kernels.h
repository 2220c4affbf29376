// The B-spline kernels (bspline_kernels.cpp): their Python registration and the one kernel the
// plugin's own functions call directly.
#pragma once

#include <ATen/core/Tensor.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

void register_bspline_kernels(pybind11::module_& m);

// Static mode's reads in one parallel pass (docs/design.md §I6.5): the fixed map's values at
// fixed_index and the moving map's values and index-space gradients at moving_index, both image
// B-splines of `order` (mirror boundary). Coefficients (P, C) float32/float64, same dtype and C;
// indices (N, D) float64, ITK order. Returns {fixed (N, C), moving (N, C), d moving / d index
// (N, C, D)}, float64.
std::vector<at::Tensor> bspline_read_pair(const at::Tensor& fixed_coef, const std::vector<int64_t>& fixed_size_xyz,
                                          const at::Tensor& fixed_index, const at::Tensor& moving_coef,
                                          const std::vector<int64_t>& moving_size_xyz, const at::Tensor& moving_index,
                                          int64_t order);
