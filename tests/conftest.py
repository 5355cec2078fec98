"""pytest setup shared by every test file.

* Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors, which must be
  switched on (TRITON_INTERPRET=1) before anything imports triton or pykernels: done here,
  first thing, since pytest imports conftest.py before the test modules.
* `backend` / `dtype`: a test that takes a `backend` argument runs once per Backend below (and,
  if it also takes `dtype`, once per dtype that backend supports). Restrict with
  @pytest.mark.backends("cpp", "reference") and/or @pytest.mark.dtypes(torch.float64).
* PYKERNELS_POISON_OUTPUTS=1 (set here, before pykernels is imported): see
  pykernels/ops/_outputs.py.
* `gen`: a fresh torch.Generator per test, seeded from the test's id (reproducible, different
  for every test case). PYKERNELS_TEST_SEED=n shifts every seed.
"""

import os

try:
    import torch as _torch_probe  # torch itself does not import triton

    _HAS_CUDA = _torch_probe.cuda.is_available()
except Exception:  # pragma: no cover - torch is a hard dependency
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
# outputs on reused storage (pykernels/ops/_outputs.py) come NaN-filled: an element a kernel
# skips cannot pass on an earlier call's value
os.environ.setdefault("PYKERNELS_POISON_OUTPUTS", "1")

import importlib.util  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = _HAS_CUDA
HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@dataclass(frozen=True)
class Backend:
    """One way of running the ops: a pykernels.backend() name and the device of the tensors."""

    name: str       # "cpp" | "triton" | "reference" | "auto"
    device: str     # "cpu" | "cuda"
    dtypes: tuple   # dtypes this backend is tested in

    @property
    def id(self):
        return f"{self.name}-{self.device}"

    @property
    def interpreted(self):
        """True for Triton kernels run by the (slow) interpreter: keep shapes small."""
        return self.name == "triton" and self.device == "cpu"

    def context(self):
        import pykernels

        return pykernels.backend(self.name)

    def skip_reason(self):
        if self.device == "cuda" and not HAS_CUDA:
            return "no CUDA device"
        if self.name == "triton" and not HAS_TRITON:
            return "triton is not importable"
        if self.interpreted and not TRITON_INTERPRETED:
            return ("Triton on CPU tensors needs TRITON_INTERPRET=1, which conftest sets only when "
                    "there is no GPU")
        return None


BACKENDS = [
    Backend("cpp", "cpu", (torch.float32, torch.float64)),
    Backend("triton", "cpu", (torch.float32,)),
    Backend("reference", "cpu", (torch.float32, torch.float64)),
]
if HAS_CUDA:
    BACKENDS.append(Backend("triton", "cuda", (torch.float32, torch.float16, torch.bfloat16)))


def _dtype_id(dtype):
    return str(dtype).replace("torch.", "")


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run only on these backend names")
    config.addinivalue_line("markers", "dtypes(*dtypes): run only in these dtypes")
    config.addinivalue_line("markers", "slow: minutes and ~10 GB of memory; skipped unless selected with -m slow")


def pytest_generate_tests(metafunc):
    if "backend" not in metafunc.fixturenames:
        return
    m = metafunc.definition.get_closest_marker("backends")
    names = set(m.args) if m else None
    m = metafunc.definition.get_closest_marker("dtypes")
    dtypes = set(m.args) if m else None
    with_dtype = "dtype" in metafunc.fixturenames
    params = []
    for b in BACKENDS:
        if names is not None and b.name not in names:
            continue
        reason = b.skip_reason()
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        if not with_dtype:
            params.append(pytest.param(b, id=b.id, marks=marks))
            continue
        for d in b.dtypes:
            if dtypes is None or d in dtypes:
                params.append(pytest.param(b, d, id=f"{b.id}-{_dtype_id(d)}", marks=marks))
    if with_dtype:
        metafunc.parametrize(("backend", "dtype"), params)
    else:
        metafunc.parametrize("backend", params)


def _seed(request):
    base = int(os.environ.get("PYKERNELS_TEST_SEED", "0"))
    return (zlib.crc32(request.node.nodeid.encode()) + base) % (2**31)


@pytest.fixture
def seed(request):
    s = _seed(request)
    request.node.user_properties.append(("seed", s))
    return s


@pytest.fixture
def gen(seed):
    """A fresh torch.Generator for this test case (CPU; make_tensor moves data to the device)."""
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def np_rng(seed):
    """A fresh NumPy Generator for this test case."""
    return np.random.default_rng(seed)
