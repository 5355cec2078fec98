"""The C++ kernels' host block cache (csrc/memory.cpp) and its workspaces.

Large per-call buffers (the RNN's workspace, packed weights and gate gradients) come from a cache
of blocks that are kept when freed, so the next call finds their pages faulted in. Checked here:
  * a workspace (pykernels._C.workspace: a DLPack capsule over a block) is a 1-D float tensor of
    the asked size; freeing the tensor gives its block back, and the next workspace of that size
    is the same block; a capsule never consumed gives its block back too;
  * pykernels.empty_cache() frees the free blocks only (a block in use stays valid);
  * PYKERNELS_CACHE_MB bounds the free blocks kept (0: nothing kept);
  * bad arguments raise ValueError naming them; threads acquiring and freeing at once; a forked
    child uses the cache.
That the kernels never read a reused block's stale contents is in tests/test_rnn.py
(test_cpp_kernels_ignore_stale_cache_blocks: the cache poisoned with NaN between two calls).

Run: .venv/bin/python -m pytest -q tests/test_memory.py -p no:logging
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import pykernels
from pykernels import _C
from helpers import in_threads

MiB = 1 << 20


def _workspace(numel, dtype=torch.float32):
    return torch.from_dlpack(_C.workspace(numel, torch.empty((), dtype=dtype).element_size()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_workspace_is_a_float_tensor_over_a_reused_block(dtype):
    pykernels.empty_cache()  # no block of this size left by an earlier test: the reuse is this one
    n = 3 * MiB // dtype.itemsize + 5
    t = _workspace(n, dtype)
    assert t.shape == (n,) and t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()
    assert t.data_ptr() % (2 * MiB) == 0
    vals = torch.randn(n, dtype=dtype)
    t.copy_(vals)  # the whole block is writable and reads back
    assert torch.equal(t, vals)
    ptr, before = t.data_ptr(), _C.cached_bytes()
    del t
    assert _C.cached_bytes() >= before + n * dtype.itemsize
    again = _workspace(n, dtype)
    assert again.data_ptr() == ptr


def test_an_unconsumed_capsule_gives_its_block_back():
    cap = _C.workspace(2 * MiB, 4)
    before = _C.cached_bytes()  # after the acquire: it may have taken a cached block
    del cap
    assert _C.cached_bytes() >= before + 8 * MiB


def test_empty_cache_frees_only_free_blocks():
    held = _workspace(MiB)
    held.fill_(3.0)
    freed = _workspace(2 * MiB)
    del freed
    assert _C.cached_bytes() >= 8 * MiB
    assert pykernels.empty_cache() >= 8 * MiB
    assert _C.cached_bytes() == 0
    assert bool((held == 3.0).all())  # still valid, still ours
    held.fill_(4.0)
    assert bool((held == 4.0).all())


def test_cache_mb_bounds_what_is_kept():
    code = ("import torch, pykernels; from pykernels import _C\n"
            "t = torch.from_dlpack(_C.workspace(1 << 20, 4)); del t\n"
            "print(_C.cached_bytes())")
    for mb, kept in (("0", False), ("64", True)):
        env = dict(os.environ, PYKERNELS_CACHE_MB=mb)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=120, check=True).stdout.split()
        assert (int(out[-1]) > 0) == kept, (mb, out)


@pytest.mark.parametrize("args, needle", [((-1, 4), "numel must be >= 0"),
                                          ((10, 2), "itemsize must be 4"),
                                          ((10, 16), "itemsize must be 4"),
                                          ((1 << 62, 4), "numel must be below")])
def test_workspace_rejects_bad_arguments(args, needle):
    with pytest.raises(ValueError, match=needle):
        _C.workspace(*args)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_can_use_the_cache():
    held = _workspace(MiB)  # the cache is set up before the fork
    del held
    pid = os.fork()
    if pid == 0:  # the child: no pytest and no torch ops (torch's OpenMP is not fork-safe)
        code = 1
        try:
            cap = _C.workspace(MiB, 4)  # takes the lock, then gives the block back: takes it again
            before = _C.cached_bytes()
            del cap
            code = 0 if _C.cached_bytes() >= before + 4 * MiB else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_threads_share_the_cache_safely():
    def work(seed):
        g = torch.Generator().manual_seed(seed)
        for i in range(40):
            n = (1 + (seed + i) % 3) * MiB
            t = _workspace(n)
            v = torch.randn(n, generator=g)
            t.copy_(v)
            assert torch.equal(t, v), f"thread {seed} iteration {i}: another thread wrote into this block"
            del t

    in_threads([lambda s=s: work(s) for s in range(4)])
