"""Host-side helpers shared by the Triton launchers (kernels/<op>.py): the interpreter switch,
the device check, and how many programs fill the GPU (split reductions). Only torch is
imported here."""

import os

import torch

# Decided once, at import: the interpreter runs kernels on CPU tensors with NumPy.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_devices(named):
    """All tensors on one device; CPU tensors only under the interpreter."""
    device = None
    for name, t in named:
        if t is None:
            continue
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {device}; all must be on one device")
    if device is not None and device.type != "cuda" and not INTERPRET:
        raise RuntimeError(f"{first} is on {device}: the Triton kernels need CUDA tensors, or "
                           f"TRITON_INTERPRET=1 set before pykernels is imported to run on the CPU")


def _cdiv(a, b):
    return -(-a // b)


_SM_COUNT = {}


def target_programs(device, interpreted=4):
    """Programs wanted in flight: two per SM on a GPU; `interpreted` under the interpreter."""
    if device.type != "cuda":
        return interpreted
    if device not in _SM_COUNT:
        _SM_COUNT[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return 2 * _SM_COUNT[device]


def split_reduction(R, tiles, partial_elems, device, elem_bytes, min_rows, max_partial_bytes,
                    max_splits=None):
    """(splits, chunk): how many ranges a reduction over R rows (pixels, (t, b) steps) is cut
    into, so that tiles * splits fills the machine, each range has >= min_rows rows, the
    partial buffers (partial_elems each) stay under max_partial_bytes and splits <= max_splits;
    chunk is the rows per range, a multiple of 128 (16 under the interpreter)."""
    want = _cdiv(target_programs(device), max(tiles, 1))
    limits = [want, R // min_rows, max_partial_bytes // max(partial_elems * elem_bytes, 1)]
    if max_splits is not None:
        limits.append(max_splits)
    splits = max(1, min(limits))
    align = 16 if INTERPRET else 128
    chunk = _cdiv(_cdiv(R, splits), align) * align
    return _cdiv(R, chunk), chunk
