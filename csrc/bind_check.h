// bind_check.h — argument checks of the pybind11 entry points (csrc/*_bind.cpp, bindings.cpp).
//
// The Python layers (pykernels/ops, pykernels/numpy.py) validate tensors and arrays before they
// call pykernels._C. A direct call through pykernels._C gets these checks too: every value no
// tensor could have (a negative size, a zero stride of the window, groups that do not divide the
// channels, a missing pointer where data is read or written, an unknown activation or kind)
// raises ValueError naming the function and the argument instead of crashing. What cannot be
// checked from integers: that a pointer really addresses that many elements with those strides.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace pk::check {

[[noreturn]] inline void fail(const char* fn, const std::string& what) {
  throw std::invalid_argument(std::string("pykernels._C.") + fn + ": " + what);  // -> ValueError
}

inline void require(bool ok, const char* fn, const char* what) {
  if (!ok) fail(fn, what);
}

inline void nonneg(const char* fn, const char* name, int64_t v) {
  if (v < 0) fail(fn, std::string(name) + " must be >= 0, got " + std::to_string(v));
}

inline void positive(const char* fn, const char* name, int64_t v) {
  if (v < 1) fail(fn, std::string(name) + " must be >= 1, got " + std::to_string(v));
}

// A pointer the kernel reads or writes whenever there is work (`work` elements > 0).
inline void pointer(const char* fn, const char* name, uintptr_t p, bool work) {
  if (work && p == 0) fail(fn, std::string(name) + " is 0 (a null pointer) but the call has work to do");
}

inline void act(const char* fn, int a) {
  if (a < 0 || a > 4) fail(fn, "act must be 0 (none), 1 (relu), 2 (gelu), 3 (tanh) or 4 (sigmoid), got " +
                               std::to_string(a));
}

}  // namespace pk::check
