"""Large CPU outputs (gradients) on storage kept between calls, reused only when nothing refers to it.

Why: a fresh CPU tensor of a few hundred KB or more comes from glibc, which returns the top of
its heap to the OS (or munmaps the block) when such tensors are freed, depending on the order of
earlier allocations; the next call's tensor then faults its pages in again. Measured here: an
LSTMCell step at B32 I256 H256 freed and re-faulted its two 1 MiB weight gradients on every call
(~550 page faults, ~0.5 ms of a ~1 ms step) in some runs of the benchmark process and not in
others, while torch's own LSTMCell, allocating the same sizes in another order, did not.

`new_output(shape, like)` returns an ordinary torch tensor (torch-allocated, resizable storage)
whose storage this pool also holds. A later request of the same byte size and dtype gets that
storage back only when the pool's reference is the storage's only one
(torch._C._storage_Use_Count == 1): no tensor, view, NumPy array or DLPack export of it is
alive. Each request gets a new tensor object on the storage, so a caller holding an old
tensor object always holds a storage reference too.
Bounded: at most kPerSize storages per (size, dtype) and PYKERNELS_OUTPUT_POOL_MB (default 256)
in all; past that, plain allocations. `pykernels.empty_cache()` drops the unused ones.
A reused storage holds an earlier call's values, which a kernel that skips an element would
pass on unnoticed: with PYKERNELS_POISON_OUTPUTS=1 (the test suite sets it) every reused
storage is filled with NaN before it is handed out.
"""
from __future__ import annotations

import math
import os
import threading
from typing import Dict, List, Sequence, Tuple

import torch
from torch import Tensor

kMinBytes = 128 * 1024   # below glibc's default mmap threshold: small blocks stay in its bins
kPerSize = 4
_LIMIT = int(float(os.environ.get("PYKERNELS_OUTPUT_POOL_MB", "256")) * 2**20)
_POISON = os.environ.get("PYKERNELS_POISON_OUTPUTS", "0") == "1"

_lock = threading.Lock()
_pool: Dict[Tuple[int, torch.dtype], List[torch.UntypedStorage]] = {}
_held = 0


def _use_count(storage: torch.UntypedStorage) -> int:
    return torch._C._storage_Use_Count(storage._cdata)


def new_output(shape: Sequence[int], like: Tensor) -> Tensor:
    """An uninitialised tensor of `shape` with like's dtype and device (see the module docstring)."""
    numel = math.prod(shape)
    nbytes = numel * like.element_size()
    if like.device.type != "cpu" or nbytes < kMinBytes or _LIMIT <= 0:
        return like.new_empty(shape)
    global _held
    key = (nbytes, like.dtype)
    with _lock:
        entries = _pool.setdefault(key, [])
        storage = next((s for s in entries if _use_count(s) == 1 and s.nbytes() >= nbytes), None)
        reused = storage is not None
        if storage is None:
            fresh = like.new_empty(numel)
            if len(entries) >= kPerSize or _held + nbytes > _LIMIT:
                return fresh.view(shape)
            storage = fresh.untyped_storage()
            entries.append(storage)
            _held += nbytes
        out = like.new_empty(0).set_(storage, 0, tuple(shape))
    if reused and _POISON and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def empty() -> int:
    """Drops the pool's storages that nothing else refers to; returns their bytes."""
    global _held
    freed = 0
    with _lock:
        for key, entries in list(_pool.items()):
            keep = [s for s in entries if _use_count(s) > 1]
            freed += key[0] * (len(entries) - len(keep))
            if keep:
                _pool[key] = keep
            else:
                del _pool[key]
        _held -= freed
    return freed
