// pool2d_bind.cpp — pybind11 entry points of the pooling kernels (skeleton; being written).
#include <pybind11/pybind11.h>

#include "common.h"

namespace py = pybind11;

void bind_pool2d(py::module_& m) {}
