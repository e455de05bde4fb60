"""tbn_tvm.datasets: the bundled MNIST test set and its fixed split, sklearn digits, CIFAR-10 folders."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest

from tbn_tvm.datasets import (
    MNIST_DIR,
    load_cifar10_folder,
    load_digits_split,
    load_mnist_split,
    load_mnist_test,
)
from tbn_tvm.errors import TBNError

# Published facts about the MNIST test set (not derived from the code under test).
MNIST_TEST_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_bundled_mnist_files_are_the_published_ones():
    for name, md5 in MNIST_TEST_MD5.items():
        assert hashlib.md5((MNIST_DIR / name).read_bytes()).hexdigest() == md5


def test_load_mnist_test():
    x, y = load_mnist_test()
    assert x.shape == (10000, 784) and x.dtype == np.float32
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == MNIST_TEST_CLASS_COUNTS
    assert y[:5].tolist() == [7, 2, 1, 0, 4]
    # Raw IDX bytes, read here independently: pixel (0, 7, 7..) of image 0 / 255.
    raw = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert struct.unpack(">IIII", raw[:16]) == (2051, 10000, 28, 28)
    first = np.frombuffer(raw[16 : 16 + 784], np.uint8)
    np.testing.assert_array_equal(x[0], first.astype(np.float32) / 255)
    images, _ = load_mnist_test(flatten=False)
    assert images.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(images.reshape(10000, -1), x)


def test_mnist_split_is_first_8000_and_last_2000():
    x, y = load_mnist_test()
    d = load_mnist_split()
    assert d.name == "mnist" and d.input_shape == (784,) and d.num_classes == 10
    np.testing.assert_array_equal(d.x_train, x[:8000])
    np.testing.assert_array_equal(d.y_train, y[:8000])
    np.testing.assert_array_equal(d.x_test, x[8000:])
    np.testing.assert_array_equal(d.y_test, y[8000:])
    assert "8000" in d.description
    assert load_mnist_split(flatten=False).input_shape == (1, 28, 28)


def test_corrupt_idx_files_raise_tbnerror(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(TBNError, match="gzip"):
        load_mnist_test(folder=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">IIII", 2051, 2, 28, 28)))
    with pytest.raises(TBNError, match="expected 1568 bytes"):
        load_mnist_test(folder=tmp_path)
    with pytest.raises(TBNError, match="no such file"):
        load_mnist_test(folder=tmp_path / "nowhere")


def test_digits_split():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    d = load_digits_split()
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_test.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == np.float32 and 0 <= d.x_train.min() and d.x_train.max() <= 1
    # The split is a partition of the 1797 images; stratified: every class in the held-out set.
    raw = load_digits()
    both = np.concatenate([d.x_train.reshape(-1, 64), d.x_test.reshape(-1, 64)]) * 16
    assert sorted(map(bytes, both.astype(np.uint8))) == sorted(map(bytes, raw.data.astype(np.uint8)))
    assert np.bincount(d.y_test, minlength=10).min() >= 35
    again = load_digits_split()
    np.testing.assert_array_equal(again.x_test, d.x_test)  # fixed split_seed
    other = load_digits_split(split_seed=1)
    assert not np.array_equal(other.y_test, d.y_test)
    assert load_digits_split(flatten=True).input_shape == (64,)


# ------------------------------------------------------------------------------------ CIFAR-10
def write_cifar_folder(root, n_per_batch: int = 6, seed: int = 0):
    """A tiny folder in torchvision's format: cifar-10-batches-py/data_batch_1..5 + test_batch,
    each a pickled dict with bytes keys, uint8 data [N, 3072] (R, G, B planes) and int labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    return folder, written


def test_cifar10_folder_round_trip(tmp_path):
    folder, written = write_cifar_folder(tmp_path)
    for path in (tmp_path, folder):  # root or the batches folder itself
        d = load_cifar10_folder(path)
        assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (6, 3, 32, 32)
        train_data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
        np.testing.assert_array_equal(d.x_train, train_data.reshape(30, 3, 32, 32).astype(np.float32) / 255)
        assert d.y_train.tolist() == sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
        assert d.y_test.tolist() == written["test_batch"][1]
    # channel order: the first 1024 bytes of a row are the red plane
    np.testing.assert_array_equal(
        d.x_test[0, 0].reshape(-1) * 255, written["test_batch"][0][0, :1024].astype(np.float32)
    )
    raw = load_cifar10_folder(tmp_path, as_uint8=True)
    assert raw.x_train.dtype == np.uint8


def test_cifar10_errors(tmp_path):
    with pytest.raises(TBNError, match="no such folder"):
        load_cifar10_folder(tmp_path / "missing")
    folder, _ = write_cifar_folder(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(TBNError, match="data_batch_3: no such file"):
        load_cifar10_folder(tmp_path)


def test_cifar10_pickle_cannot_run_code(tmp_path):
    folder, _ = write_cifar_folder(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(TBNError, match="forbidden"):
        load_cifar10_folder(tmp_path)
    assert not marker.exists()


def test_cifar10_bad_contents(tmp_path):
    folder, _ = write_cifar_folder(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(TBNError, match="3072"):
        load_cifar10_folder(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump([1, 2, 3], f, protocol=2)
    with pytest.raises(TBNError, match="not a CIFAR-10"):
        load_cifar10_folder(tmp_path)
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(TBNError, match="not a CIFAR-10"):
        load_cifar10_folder(tmp_path)
