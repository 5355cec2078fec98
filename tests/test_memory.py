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

The storage kept for large gradients (pykernels/ops/_outputs.py): an output is an ordinary
tensor with resizable storage; its storage is handed out again only when no tensor, view or
NumPy array uses it, NaN-filled (the suite runs with PYKERNELS_POISON_OUTPUTS=1); small outputs
are not kept; the per-size and PYKERNELS_OUTPUT_POOL_MB bounds; empty_cache() drops only the
unused; threads never share one in use; RNN gradients kept from one backward are not touched by
the next, and accumulate into .grad as before.

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
from pykernels.ops import _outputs
from helpers import assert_close, in_threads, make_tensor

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


# ---- the storage kept for large outputs (pykernels/ops/_outputs.py) ---------------------------
_LIKE = torch.empty(0)
_BIG = (512, 256)  # 512 KiB of float32: kept


def test_outputs_reuse_only_storage_nothing_refers_to():
    _outputs.empty()
    assert os.environ.get("PYKERNELS_POISON_OUTPUTS") == "1"  # set by conftest.py
    a = _outputs.new_output(_BIG, _LIKE)
    assert a.shape == _BIG and a.dtype == torch.float32 and a.is_contiguous()
    assert a.untyped_storage().resizable()  # torch's own allocation, not a foreign buffer
    ptr = a.data_ptr()
    row = a[3]  # a view keeps the storage in use
    del a
    b = _outputs.new_output(_BIG, _LIKE)
    assert b.data_ptr() != ptr
    del row, b
    c = _outputs.new_output(_BIG, _LIKE)
    assert c.data_ptr() == ptr  # nothing refers to it any more: handed out again ...
    assert bool(torch.isnan(c).all())  # ... NaN-filled
    arr = c.numpy()  # a NumPy array over it keeps it in use too
    del c
    d = _outputs.new_output(_BIG, _LIKE)
    assert d.data_ptr() != ptr
    arr[:] = 1.0
    assert float(arr.sum()) == arr.size
    d.resize_(1024, 256)  # an output's storage grows like any tensor's
    assert d.shape == (1024, 256)


def test_outputs_small_and_past_the_bounds_are_plain_tensors():
    _outputs.empty()
    small = _outputs.new_output((16, 16), _LIKE)
    assert not _outputs._pool, "a 1 KiB output was kept"
    held = [_outputs.new_output(_BIG, _LIKE) for _ in range(_outputs.kPerSize + 2)]
    assert len(_outputs._pool[(_BIG[0] * _BIG[1] * 4, torch.float32)]) == _outputs.kPerSize
    for t in held + [small]:
        t.fill_(2.0)
        assert bool((t == 2.0).all())
    code = ("import torch; from pykernels.ops import _outputs\n"
            "t = _outputs.new_output((512, 256), torch.empty(0)); del t\n"
            "print(len(_outputs._pool))")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYKERNELS_OUTPUT_POOL_MB="0"),
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert out[-1] == "0", out


def test_empty_cache_drops_only_unused_outputs():
    _outputs.empty()
    held = _outputs.new_output(_BIG, _LIKE)
    held.fill_(3.0)
    dropped = _outputs.new_output(_BIG, _LIKE)
    del dropped
    assert _outputs.empty() == _BIG[0] * _BIG[1] * 4
    assert bool((held == 3.0).all())
    again = _outputs.new_output(_BIG, _LIKE)  # the held one is still in use: not handed out
    assert again.data_ptr() != held.data_ptr()


def test_threads_never_share_an_output_in_use():
    _outputs.empty()

    def work(seed):
        for i in range(60):
            t = _outputs.new_output(_BIG, _LIKE)
            t.fill_(float(seed))
            torch.mm(t[:64], t[:256].t())  # some time with the storage in use
            assert bool((t == float(seed)).all()), f"thread {seed} iteration {i}: another thread wrote here"
            del t

    in_threads([lambda s=s: work(s) for s in range(4)])


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell"])
def test_rnn_gradients_kept_between_backwards(kind, gen):
    # I256 H256: 1 MiB / 768 KiB weight gradients, the ones on kept storage
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    ref = getattr(torch.nn, kind)(256, 256)
    pk = getattr(pykernels.nn, kind)(256, 256)
    pk.load_state_dict(ref.state_dict())
    lstm = kind == "LSTMCell"

    def grads(module, x):
        out = module(x)
        h = out[0] if lstm else out
        return torch.autograd.grad(h.sum(), list(module.parameters()))

    x1, x2 = (make_tensor((8, 256), torch.float32, gen) for _ in range(2))
    g1 = grads(pk, x1)
    kept = [g.clone() for g in g1]
    g2 = grads(pk, x2)  # while g1 is held: other storage
    for a, b in zip(g1, kept):
        assert torch.equal(a, b), "the second backward wrote into the first one's gradients"
    for name, a, b in zip([n for n, _ in ref.named_parameters()], g2, grads(ref, x2)):
        assert_close(a, b, terms=4 * 512 + 8, name=f"grad of {name}")
    del g1, g2
    # .grad accumulates over two backwards as torch's does
    for m in (pk, ref):
        m.zero_grad(set_to_none=True)
        for x in (x1, x2):
            out = m(x)
            (out[0] if lstm else out).sum().backward()
    for (name, a), b in zip(pk.named_parameters(), ref.parameters()):
        assert_close(a.grad, b.grad, terms=2 * (4 * 512 + 8), name=f"accumulated grad of {name}")
