"""Small image data sets for training and evaluating tiled networks, all readable offline.

* **MNIST** — only the official *test* set (10,000 images) is bundled with the package
  (``tbn_tvm/data/mnist``).  :func:`load_mnist_test` returns all of it;
  :func:`load_mnist_split` returns the fixed, seed-independent split used for training:
  the **first 8,000** images are the training set and the **last 2,000** are held out.
* **digits** — scikit-learn's bundled 8×8 digits (1,797 images); :func:`load_digits_split`
  makes a stratified 80/20 split with a fixed ``split_seed`` (0 by default).
* **CIFAR-10** — :func:`load_cifar10_folder` reads torchvision's on-disk format
  (``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``) from a folder the user has.
* **your own arrays** — :func:`load_npz_split` reads ``x`` / ``y`` (and optionally
  ``x_test`` / ``y_test``) from a ``.npz`` file written by ``numpy.savez``.

Pixels are float32 in [0, 1] (no mean/std normalisation: the models learn it), labels uint8.

>>> from tbn_tvm.datasets import load_mnist_split
>>> d = load_mnist_split()
>>> d.x_train.shape, d.x_test.shape
((8000, 784), (2000, 784))
"""

from __future__ import annotations

import gzip
import importlib
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tbn_tvm.errors import TBNError

__all__ = [
    "DataSplit",
    "MNIST_DIR",
    "MNIST_TRAIN_SIZE",
    "load_mnist_test",
    "load_mnist_split",
    "load_digits_split",
    "load_cifar10_folder",
    "load_npz_split",
]

MNIST_DIR = Path(__file__).resolve().parent / "data" / "mnist"
"""Folder of the bundled MNIST test set (IDX, gzip)."""

MNIST_TRAIN_SIZE = 8000
"""Images ``[0, 8000)`` of the MNIST test set train; ``[8000, 10000)`` are held out."""

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class DataSplit:
    """A train / held-out split of one data set.

    ``x_*`` are float32 in [0, 1] with the per-sample shape :attr:`input_shape`; ``y_*`` are
    uint8 class indices.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    description: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample (without the batch axis)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (
            f"DataSplit({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"classes={self.num_classes})"
        )


# --------------------------------------------------------------------------------------- MNIST
def _read_idx(path: Path) -> np.ndarray:
    """Read one gzip-compressed IDX file (the MNIST format) into a uint8 array."""
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError:
        raise TBNError(
            f"{path}: no such file", hint="the bundled MNIST files are missing; reinstall tbn-tvm"
        ) from None
    except (OSError, EOFError) as e:
        raise TBNError(f"{path}: not a gzip file ({e})") from None
    if len(raw) < 4:
        raise TBNError(f"{path}: truncated IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise TBNError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise TBNError(f"{path}: expected {count} bytes of data for shape {dims}, found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist_test(flatten: bool = True, folder: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 MNIST test images and labels.

    Returns ``(x, y)``: ``x`` float32 in [0, 1] of shape ``[10000, 784]`` (or
    ``[10000, 1, 28, 28]`` with ``flatten=False``), ``y`` uint8 of shape ``[10000]``.
    ``folder`` defaults to the copy bundled with the package.

    >>> x, y = load_mnist_test()
    >>> x.shape, x.dtype, y[:5].tolist()
    ((10000, 784), dtype('float32'), [7, 2, 1, 0, 4])
    """
    folder = Path(folder) if folder is not None else MNIST_DIR
    images = _read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise TBNError(f"{folder}: MNIST files have inconsistent shapes {images.shape} / {labels.shape}")
    x = images.astype(np.float32) / np.float32(255.0)
    x = x.reshape(len(x), -1) if flatten else x[:, None, :, :]
    return np.ascontiguousarray(x), labels.copy()


def load_mnist_split(flatten: bool = True) -> DataSplit:
    """The fixed MNIST split used for training: first 8,000 test images train, last 2,000 held out.

    The split does not depend on any seed (the official test set is ordered as published), so
    every run and every engineer sees the same 2,000 held-out images.

    >>> d = load_mnist_split(flatten=False)
    >>> d.input_shape
    (1, 28, 28)
    """
    x, y = load_mnist_test(flatten=flatten)
    n = MNIST_TRAIN_SIZE
    return DataSplit(
        name="mnist",
        x_train=x[:n],
        y_train=y[:n],
        x_test=x[n:],
        y_test=y[n:],
        num_classes=10,
        description=(
            f"MNIST test set (bundled): images [0, {n}) train, [{n}, {len(x)}) held out; "
            "pixels / 255, no normalisation"
        ),
    )


# -------------------------------------------------------------------------------------- digits
def load_digits_split(flatten: bool = False, test_size: float = 0.2, split_seed: int = 0) -> DataSplit:
    """scikit-learn's bundled 8×8 digits, stratified train / held-out split.

    Pixels (0..16) are divided by 16.  With the defaults: 1,437 training and 360 held-out images
    of shape ``[1, 8, 8]`` (``[64]`` with ``flatten=True``).  The split depends only on
    ``split_seed`` (default 0), not on the training seed.

    >>> d = load_digits_split()
    >>> d.x_train.shape, d.x_test.shape
    ((1437, 1, 8, 8), (360, 1, 8, 8))
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise TBNError("the digits data set needs scikit-learn", hint="pip install scikit-learn") from None
    bunch = load_digits()
    x = bunch.data.astype(np.float32) / np.float32(16.0)
    x = x if flatten else x.reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.uint8)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=split_seed, stratify=y)
    return DataSplit(
        name="digits",
        x_train=np.ascontiguousarray(x_tr),
        y_train=y_tr,
        x_test=np.ascontiguousarray(x_te),
        y_test=y_te,
        num_classes=10,
        description=(
            f"sklearn load_digits (1797 8x8 images, pixels / 16): stratified split, "
            f"test_size={test_size}, random_state={split_seed}"
        ),
    )


# ------------------------------------------------------------------------------------ CIFAR-10
class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only builds what a CIFAR-10 batch contains (dicts, lists, numpy arrays).

    A pickle can run arbitrary code when loaded; restricting ``find_class`` to numpy's array
    reconstruction keeps a malformed or hostile file from doing so.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        if module == "numpy.core.multiarray":  # numpy 1.x name of the same module
            module = "numpy._core.multiarray"
        elif module == "numpy.core.numeric":
            module = "numpy._core.numeric"
        return getattr(importlib.import_module(module), name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise TBNError(
            f"{path}: no such file",
            hint="expected torchvision's CIFAR-10 layout: cifar-10-batches-py/data_batch_1..5 and test_batch",
        )
    try:
        with path.open("rb") as f:
            batch = _CifarUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as e:  # a malformed pickle can raise almost anything; report it as bad input
        raise TBNError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise TBNError(f"{path}: not a CIFAR-10 python batch (a {type(batch).__name__}, not a dict)")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise TBNError(f"{path}: CIFAR-10 batch without 'data'/'labels' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise TBNError(f"{path}: 'data' must be uint8 [N, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise TBNError(f"{path}: 'labels' must be N integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.uint8)


def load_cifar10_folder(path: str | Path, as_uint8: bool = False) -> DataSplit:
    """CIFAR-10 from a local folder in torchvision's format (the python pickle batches).

    ``path`` is either the ``cifar-10-batches-py`` folder itself or a folder that contains it
    (torchvision's ``root``).  Returns 50,000 training images (``data_batch_1..5``) and the
    10,000 ``test_batch`` images as ``[N, 3, 32, 32]`` float32 in [0, 1] (uint8 0..255 with
    ``as_uint8=True``, which needs a quarter of the memory).  Nothing is downloaded.

    >>> d = load_cifar10_folder("~/data/cifar10")          # doctest: +SKIP
    >>> d.x_train.shape                                     # doctest: +SKIP
    (50000, 3, 32, 32)
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise TBNError(
            f"{root}: no such folder",
            hint="give the folder that holds cifar-10-batches-py (torchvision's format)",
        )
    folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    if not as_uint8:
        x_train = x_train.astype(np.float32) / np.float32(255.0)
        x_test = x_test.astype(np.float32) / np.float32(255.0)
    return DataSplit(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=10,
        description=f"CIFAR-10 python batches from {folder.name}: data_batch_1..5 train, test_batch held out",
    )


# ------------------------------------------------------------------------------ a user's arrays
def load_npz_split(path: str | Path, test_size: float = 0.2, split_seed: int = 0) -> DataSplit:
    """A user's data set from a ``.npz`` file (``numpy.savez(path, x=..., y=...)``).

    ``x``: ``[N, *input_shape]`` numbers (float64 and integer types become float32; ``uint8``
    stays ``uint8`` and is scaled to [0, 1] when batches are made, like the bundled loaders'
    ``as_uint8`` arrays).  ``y``: ``[N]`` integer class indices ``≥ 0`` (returned as int64; the
    number of classes is ``max(y) + 1``).  When the file also holds ``x_test`` and ``y_test``,
    they are the held-out part; otherwise a fraction ``test_size`` of the samples, chosen by a
    random permutation seeded with ``split_seed`` (independent of any training seed), is held
    out.  Pickled objects are refused.  Raises :class:`~tbn_tvm.errors.TBNError` for a missing
    or unreadable file, missing arrays, mismatched lengths or non-integer labels.

    >>> import numpy as np, os, tempfile
    >>> f = os.path.join(tempfile.mkdtemp(), "toy.npz")
    >>> np.savez(f, x=np.zeros((10, 3)), y=np.arange(10) % 2)
    >>> d = load_npz_split(f)
    >>> d.x_train.shape, d.x_test.shape, d.num_classes
    ((8, 3), (2, 3), 2)
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise TBNError(f"{path}: no such file") from None
    except ValueError as e:
        raise TBNError(f"{path}: cannot read it as .npz without pickle ({e})") from None
    except (OSError, EOFError) as e:
        raise TBNError(f"{path}: not a .npz file ({e})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise TBNError(
                f"{path}: no array {key!r} (found {sorted(arrays) or 'none'})",
                hint="write it with numpy.savez(path, x=..., y=...)",
            )

    def inputs(a: np.ndarray, key: str) -> np.ndarray:
        if a.dtype == np.uint8:
            return np.ascontiguousarray(a)
        if a.dtype.kind not in "fiub" or a.ndim < 2:
            raise TBNError(
                f"{path}: {key!r} must be numbers of shape [N, ...], got {a.dtype} {list(a.shape)}"
            )
        return np.ascontiguousarray(a, dtype=np.float32)

    def labels(a: np.ndarray, key: str, n: int) -> np.ndarray:
        if a.ndim != 1 or a.dtype.kind not in "iub" or (a.size and a.min() < 0):
            raise TBNError(
                f"{path}: {key!r} must be integer class indices >= 0 of shape [N], got {a.dtype} {list(a.shape)}"
            )
        if len(a) != n:
            raise TBNError(f"{path}: {key!r} has {len(a)} labels for {n} samples")
        return a.astype(np.int64)

    x = inputs(arrays["x"], "x")
    y = labels(arrays["y"], "y", len(x))
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise TBNError(f"{path}: x_test and y_test go together")
    if "x_test" in arrays:
        x_te = inputs(arrays["x_test"], "x_test")
        y_te = labels(arrays["y_test"], "y_test", len(x_te))
        if x_te.shape[1:] != x.shape[1:]:
            raise TBNError(
                f"{path}: x_test samples {list(x_te.shape[1:])} differ from x samples {list(x.shape[1:])}"
            )
        x_tr, y_tr = x, y
        how = "x_test/y_test from the file held out"
    else:
        if not 0 < test_size < 1:
            raise TBNError(f"test_size must be between 0 and 1, got {test_size}")
        n_test = int(round(len(x) * test_size))
        if n_test < 1 or n_test >= len(x):
            raise TBNError(f"{path}: {len(x)} samples are too few to hold out {test_size:.0%}")
        order = np.random.default_rng(split_seed).permutation(len(x))
        x_tr, y_tr = x[order[n_test:]], y[order[n_test:]]
        x_te, y_te = x[order[:n_test]], y[order[:n_test]]
        how = f"random {test_size:.0%} held out (split_seed={split_seed})"
    classes = int(max(y_tr.max(initial=0), y_te.max(initial=0))) + 1
    return DataSplit(
        name=path.stem,
        x_train=np.ascontiguousarray(x_tr),
        y_train=y_tr,
        x_test=np.ascontiguousarray(x_te),
        y_test=y_te,
        num_classes=classes,
        description=f"{path.name}: {len(x_tr)} training / {len(x_te)} held-out samples, {how}",
    )
