"""Host-side helpers shared by the Triton launchers (kernels/<op>.py): the interpreter switch
and the device check. Only torch is imported here."""

import os

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
