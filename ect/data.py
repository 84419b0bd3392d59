"""Datasets: uint8 images in memory behind one small interface.

Every dataset (digits here; CIFAR-10 and image folders for ImageNet 64×64) is an :class:`ImageDataset`
holding uint8 images [N, C, H, W] and optional integer labels. Training scales images to [−1, 1];
evaluation compares uint8 images, as EDM's metrics do.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import os
import pickle
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ect.errors import UserError

DIGITS_HELDOUT = 297  # 1,797 = 1,500 train + 297 held-out
DIGITS_SPLIT_SEED = 0

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # the official md5, as torchvision.datasets.CIFAR10
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class DatasetError(UserError):
    """A dataset is unknown, missing or malformed."""


@dataclass(frozen=True)
class ImageDataset:
    name: str
    images: np.ndarray  # uint8 [N, C, H, W]
    labels: np.ndarray | None = None  # int64 [N], or None for unlabelled data
    num_classes: int = 0  # size of the one-hot label vector; 0 = unconditional
    split: str = "train"

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DatasetError(f"{self.name}: images must be uint8 [N, C, H, W], got {self.images.dtype} "
                               f"{self.images.shape}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DatasetError(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.images.shape[2]

    def batch(
        self, indices: np.ndarray, device: torch.device | str = "cpu", conditional: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images scaled to [−1, 1] and, for conditional training, one-hot labels."""
        x = torch.from_numpy(self.images[indices]).to(device=device, dtype=torch.float32) / 127.5 - 1
        if not conditional:
            return x, None
        if self.labels is None:
            raise DatasetError(f"{self.name} has no labels, but a class-conditional model was requested")
        y = torch.from_numpy(self.labels[indices]).to(device)
        return x, torch.nn.functional.one_hot(y, self.num_classes).to(torch.float32)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (images 1797×8×8 in 0…16, labels), what ``load_digits`` returns.

    Read straight from the CSV that scikit-learn ships, as ``load_digits`` does: importing scikit-learn costs about
    1.4 s, which every training, sampling and evaluation job of the embedded default would pay. Falls back to
    ``load_digits`` if a scikit-learn release moves the file.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if csv is None or not csv.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    data = np.loadtxt(csv, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)


def _digits(split: str = "train", **_: Any) -> ImageDataset:
    """scikit-learn's bundled 8×8 digits: 17 grey levels (0…16) mapped to uint8 0…255."""
    grey, target = digits_arrays()
    images = np.rint(grey * (255 / 16)).astype(np.uint8)[:, None]
    labels = target.astype(np.int64)
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(images))
    parts = {"train": order[DIGITS_HELDOUT:], "heldout": order[:DIGITS_HELDOUT], "all": np.arange(len(images))}
    if split not in parts:
        raise DatasetError(f"digits: unknown split {split!r}; choose from {sorted(parts)}")
    idx = np.sort(parts[split])
    return ImageDataset("digits", images[idx], labels[idx], num_classes=10, split=split)


def default_data_dir() -> Path:
    """Where downloadable datasets go when no ``data_dir`` is given: ``$ECT_DATA``, else ``~/.cache/ect/data``."""
    return Path(os.environ.get("ECT_DATA", Path.home() / ".cache" / "ect" / "data")).expanduser()


def _download_cifar10(path: Path, hint: str) -> None:
    """Download the official archive to ``path`` with torchvision (md5-checked), through a temporary folder next to
    it, so an interrupted or corrupt download never leaves a file under ``path``."""
    from torchvision.datasets.utils import download_url

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as tmp:
        try:
            download_url(CIFAR10_URL, tmp, CIFAR10_ARCHIVE, CIFAR10_MD5)
        except RuntimeError as exc:  # torchvision's "File not found or corrupted."
            raise DatasetError(f"cifar10: download of {CIFAR10_URL} is corrupt (md5 is not {CIFAR10_MD5}); "
                               f"{hint}") from exc
        except OSError as exc:  # URLError included
            raise DatasetError(f"cifar10: cannot download {CIFAR10_URL} ({exc}); {hint}") from exc
        os.replace(Path(tmp) / CIFAR10_ARCHIVE, path)


def _cifar10(split: str = "train", data_dir: str | Path | None = None, download: bool = True, **_: Any) -> ImageDataset:
    """CIFAR-10 from the official python tarball in ``data_dir``: train 50,000 / test 10,000 32×32 RGB images.

    The tarball is downloaded there if missing (and ``download``); a local copy must have the official md5,
    which also makes unpickling its batches safe.
    """
    from torchvision.datasets.utils import check_integrity

    if split not in CIFAR10_BATCHES:
        raise DatasetError(f"cifar10: unknown split {split!r}; choose from {sorted(CIFAR10_BATCHES)}")
    path = Path(data_dir or default_data_dir()).expanduser() / CIFAR10_ARCHIVE
    if not path.is_file():
        hint = f"download {CIFAR10_URL} yourself and place it at {path}"
        if not download:
            raise DatasetError(f"cifar10: {path} not found; {hint}")
        _download_cifar10(path, hint)
    if not check_integrity(path, CIFAR10_MD5):
        raise DatasetError(f"cifar10: {path} is not the official archive (md5 mismatch); delete it to re-download")
    images, labels = [], []
    with tarfile.open(path, "r:gz") as tar:
        for batch in CIFAR10_BATCHES[split]:
            member = tar.extractfile(f"cifar-10-batches-py/{batch}")
            # The official batches are Python 2 pickles: their keys load as bytes.
            raw = pickle.load(member, encoding="bytes")
            entries = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
            images.append(np.asarray(entries["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # planar R, G, B rows
            labels.append(np.asarray(entries["labels"], dtype=np.int64))
    return ImageDataset("cifar10", np.concatenate(images), np.concatenate(labels), num_classes=10, split=split)


class _ImageSource:
    """The image files of a directory or zip archive, by path relative to its root (``/``-separated)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.zip = zipfile.ZipFile(root) if root.is_file() else None
        self.names = self.zip.namelist() if self.zip else [p.relative_to(root).as_posix() for p in root.rglob("*")]

    def read(self, name: str) -> bytes:
        return self.zip.read(name) if self.zip else (self.root / name).read_bytes()

    def close(self) -> None:
        if self.zip:
            self.zip.close()


def _imagefolder(
    split: str = "train", data_dir: str | Path | None = None, name: str = "imagefolder", **_: Any
) -> ImageDataset:
    """Images in a directory or zip as EDM/EDM2's ``dataset_tool.py`` writes them (this is how ImageNet 64×64 arrives).

    Images are read in sorted file-name order; ``dataset.json`` (``{"labels": [[file, label], …]}`` or
    ``{"labels": null}``) gives optional integer labels. The folder is one set: ``split`` must be ``train``; a
    held-out set is another folder.
    """
    if split != "train":
        raise DatasetError(f"{name}: an image folder has only the split 'train' (got {split!r}); "
                           "point data_dir at another folder for a held-out set")
    root = Path(data_dir).expanduser() if data_dir is not None else None
    if root is None or not root.exists():
        raise DatasetError(f"{name}: image folder or zip not found: {data_dir} (set data.data_dir / --data-dir)")
    source = _ImageSource(root)
    try:
        extensions = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
        files = sorted(n for n in source.names if os.path.splitext(n)[1].lower() in extensions)
        if not files:
            raise DatasetError(f"{name}: no images in {data_dir}")
        images = None
        for i, file in enumerate(files):
            array = np.asarray(Image.open(io.BytesIO(source.read(file))))
            array = (array[:, :, None] if array.ndim == 2 else array).transpose(2, 0, 1)
            if images is None:  # allocate once: ImageNet 64×64 is 15 GB of uint8
                images = np.empty((len(files), *array.shape), dtype=np.uint8)
            if array.shape != images.shape[1:]:
                raise DatasetError(f"{name}: {file} has shape {array.shape}, expected {images.shape[1:]}")
            images[i] = array
        labels = None
        if "dataset.json" in source.names:
            table = json.loads(source.read("dataset.json")).get("labels")
            if table is not None:
                by_file = dict(table)
                missing = [f for f in files if f not in by_file]
                if missing:
                    raise DatasetError(f"{name}: dataset.json has no label for {missing[0]} ({len(missing)} missing)")
                labels = np.array([by_file[f] for f in files], dtype=np.int64)
    finally:
        source.close()
    num_classes = int(labels.max()) + 1 if labels is not None else 0
    return ImageDataset(name, images, labels, num_classes=num_classes, split=split)


IMAGE_SET_KEYS = ("images", "arr_0")  # ect sample's .npz key, and numpy's default (OpenAI's evaluator files)


def _layouts(array: np.ndarray, npz: bool) -> list[np.ndarray]:
    """The readings of a stored uint8 array as [N, C, H, W]: NCHW, and NHWC for an .npz (3-D: one channel)."""
    if array.ndim == 3:
        return [array[:, None]]
    return [array, array.transpose(0, 3, 1, 2)] if npz else [array]


def load_image_set(path: str | Path, shape: tuple[int, int, int] | None = None, what: str = "") -> np.ndarray:
    """uint8 images [N, C, H, W] from a folder or zip of image files, or from an ``.npz`` of uint8 images (key
    ``images`` or ``arr_0``, NCHW or NHWC), checked against ``shape`` (C, H, W; ``what`` says whose it is)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"--images {path}: not found")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                key = next((k for k in IMAGE_SET_KEYS if k in data.files), None)
                if key is None:
                    raise DatasetError(f"--images {path} holds {', '.join(data.files) or 'nothing'}; expected uint8 "
                                       f"images under {' or '.join(IMAGE_SET_KEYS)}")
                array = data[key]
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"--images {path}: not a readable .npz ({exc})") from exc
    elif path.is_dir() or zipfile.is_zipfile(path):
        array = _imagefolder(data_dir=path, name=f"--images {path}").images
    else:
        raise DatasetError(f"--images {path}: expected a folder or .zip of images, or an .npz of uint8 images")
    if array.dtype != np.uint8:
        raise DatasetError(f"--images {path}: images must be uint8 (0…255), got {array.dtype}; convert [−1, 1] "
                           "floats as EDM does: (x * 127.5 + 128).clip(0, 255).astype(np.uint8)")
    if array.ndim not in (3, 4) or len(array) == 0:
        raise DatasetError(f"--images {path}: expected images [N, C, H, W] or [N, H, W, C], got shape {array.shape}")
    readings = _layouts(array, path.suffix == ".npz")
    if shape is not None:
        fits = [a for a in readings if a.shape[1:] == tuple(shape)]
        if fits:
            return np.ascontiguousarray(fits[0])
    # No reading fits (or none is asked for): the plausible one has 1 or 3 channels.
    plausible = next((a for a in readings if a.shape[1] in (1, 3)), readings[0])
    n, c, h, w = plausible.shape
    if shape is not None:
        raise DatasetError(f"--images {path}: {n} images of {c} channel{'s' * (c != 1)} at {h}×{w}, but {what} has "
                           f"{shape[0]} channel{'s' * (shape[0] != 1)} at {shape[1]}×{shape[2]}")
    if c not in (1, 3):
        raise DatasetError(f"--images {path}: images of shape {array.shape[1:]} have neither 1 nor 3 channels")
    return np.ascontiguousarray(plausible)


# name -> loader(split=..., data_dir=..., **options). "imagenet64" is an image folder under the name the
# samplers and metrics know it by (its data_dir is the dataset_tool output).
DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "digits": _digits,
    "cifar10": _cifar10,
    "imagefolder": _imagefolder,
    "imagenet64": functools.partial(_imagefolder, name="imagenet64"),
}


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None, **options: Any) -> ImageDataset:
    """Load a dataset by name (see ``DATASETS``); results are cached in memory per argument set."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    key = (name, split, str(data_dir), tuple(sorted(options.items())))
    if key not in _CACHE:
        _CACHE[key] = DATASETS[name](split=split, data_dir=data_dir, **options)
    return _CACHE[key]


_CACHE: dict[tuple, ImageDataset] = {}


def quantize_to_levels(images: np.ndarray, levels: int) -> np.ndarray:
    """Round uint8 images to ``levels`` evenly spaced grey levels (digits has 17), as the data were stored."""
    step = 255 / (levels - 1)
    return (np.rint(np.rint(images / step) * step)).clip(0, 255).astype(np.uint8)
