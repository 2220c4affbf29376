// Registration of the B-spline kernels (bspline_kernels.cpp) in the plugin's Python module.
#pragma once

#include <pybind11/pybind11.h>

void register_bspline_kernels(pybind11::module_& m);
