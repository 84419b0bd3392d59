"""CIFAR-10 (official tarball format, never the network) and EDM-style image folders."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ect.data
from ect.data import CIFAR10_ARCHIVE, CIFAR10_URL, DatasetError, load_dataset

PER_BATCH = 4  # images per fixture batch: train 20, test 4


def write_cifar_archive(directory: Path, seed: int = 0) -> tuple[str, dict[str, tuple[np.ndarray, list[int]]]]:
    """Write a small ``cifar-10-python.tar.gz`` in the official format; returns its md5 and each batch's
    (rows, labels)."""
    rng = np.random.default_rng(seed)
    batches = {}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for batch in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
            if batch == "batches.meta":
                entry = {b"label_names": [b"airplane", b"automobile"], b"num_vis": 3072}
            else:
                data, labels = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8), rng.integers(0, 10, PER_BATCH)
                batches[batch] = data, labels.tolist()
                # As the official Python 2 pickles: bytes keys, labels a list.
                entry = {b"data": batches[batch][0], b"labels": batches[batch][1]}
            payload = pickle.dumps(entry, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{batch}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CIFAR10_ARCHIVE).write_bytes(buffer.getvalue())
    return hashlib.md5(buffer.getvalue()).hexdigest(), batches


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    md5, batches = write_cifar_archive(tmp_path / "cifar")
    monkeypatch.setattr(ect.data, "CIFAR10_MD5", md5)
    return tmp_path / "cifar", batches


def test_cifar10_local_archive(cifar):
    data_dir, batches = cifar
    train = load_dataset("cifar10", "train", data_dir)
    assert train.images.shape == (5 * PER_BATCH, 3, 32, 32) and train.images.dtype == np.uint8
    assert (train.name, train.split, train.num_classes) == ("cifar10", "train", 10)
    # Row-major planar RGB: row[c·1024 + y·32 + x] is channel c, pixel (y, x).
    row = batches["data_batch_2"][0][1]
    assert train.images[PER_BATCH + 1, 2, 5, 7] == row[2 * 1024 + 5 * 32 + 7]
    np.testing.assert_array_equal(train.labels[:PER_BATCH], batches["data_batch_1"][1])
    test = load_dataset("cifar10", "test", data_dir)
    np.testing.assert_array_equal(test.images.reshape(PER_BATCH, -1), batches["test_batch"][0])
    assert load_dataset("cifar10", "train", data_dir) is train  # cached in memory
    with pytest.raises(DatasetError, match="unknown split"):
        load_dataset("cifar10", "heldout", data_dir)


class _Response(io.BytesIO):
    """What urllib.request.urlopen returns, as far as torchvision's downloader reads it."""

    def __init__(self, url: str, payload: bytes) -> None:
        super().__init__(payload)
        self.url, self.length = url, len(payload)


def _serve(payload: bytes):
    def urlopen(request, timeout=None):
        url = getattr(request, "full_url", request)
        assert url == CIFAR10_URL
        return _Response(url, payload)

    return urlopen


def test_cifar10_download_is_checked_and_atomic(tmp_path, monkeypatch):
    md5, _ = write_cifar_archive(tmp_path / "source")
    payload = (tmp_path / "source" / CIFAR10_ARCHIVE).read_bytes()
    monkeypatch.setattr(ect.data, "CIFAR10_MD5", md5)
    monkeypatch.setattr(urllib.request, "urlopen", _serve(payload))
    assert len(load_dataset("cifar10", "test", tmp_path / "fresh")) == PER_BATCH
    assert [p.name for p in (tmp_path / "fresh").iterdir()] == [CIFAR10_ARCHIVE]

    monkeypatch.setattr(urllib.request, "urlopen", _serve(payload[:-10]))
    with pytest.raises(DatasetError, match="corrupt"):
        load_dataset("cifar10", "test", tmp_path / "broken")
    assert list((tmp_path / "broken").iterdir()) == []  # no partial file left behind


def test_cifar10_offline_errors_name_url_and_path(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    expected = tmp_path / "offline" / CIFAR10_ARCHIVE
    for download in (True, False):
        with pytest.raises(DatasetError) as info:
            load_dataset("cifar10", "train", tmp_path / "offline", download=download)
        assert CIFAR10_URL in str(info.value) and str(expected) in str(info.value)


def test_cifar10_rejects_a_foreign_archive(cifar, monkeypatch):
    monkeypatch.setattr(ect.data, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(DatasetError, match="md5"):
        load_dataset("cifar10", "train", cifar[0])


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray | None) -> None:
    """EDM dataset_tool layout: 00000/img00000000.png … and dataset.json."""
    entries = []
    for i, image in enumerate(images):
        name = f"{i // 1000:05d}/img{i:08d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        hwc = image.transpose(1, 2, 0)
        Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc).save(root / name)
        entries.append([name, int(labels[i])] if labels is not None else None)
    (root / "dataset.json").write_text(json.dumps({"labels": entries if labels is not None else None}))


def _zip(root: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for file in sorted(root.rglob("*")):
            if file.is_file():
                z.write(file, file.relative_to(root).as_posix())
    return path


@pytest.mark.parametrize("channels", [3, 1])
def test_imagefolder_dir_and_zip(tmp_path, channels):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (1003, channels, 6, 6), dtype=np.uint8)  # two subfolders
    labels = rng.integers(0, 7, len(images))
    labels[5] = 9
    _write_folder(tmp_path / "folder", images, labels)
    for data_dir in (tmp_path / "folder", _zip(tmp_path / "folder", tmp_path / "folder.zip")):
        dataset = load_dataset("imagefolder", "train", data_dir)
        np.testing.assert_array_equal(dataset.images, images)
        np.testing.assert_array_equal(dataset.labels, labels)
        assert dataset.num_classes == 10
    assert load_dataset("imagenet64", "train", tmp_path / "folder.zip").name == "imagenet64"


def test_imagefolder_unlabelled_and_errors(tmp_path):
    images = np.zeros((3, 3, 4, 4), dtype=np.uint8)
    _write_folder(tmp_path / "plain", images, None)
    dataset = load_dataset("imagefolder", "train", tmp_path / "plain")
    assert dataset.labels is None and dataset.num_classes == 0
    with pytest.raises(DatasetError, match="only the split 'train'"):
        load_dataset("imagefolder", "test", tmp_path / "plain")
    with pytest.raises(DatasetError, match="not found"):
        load_dataset("imagefolder", "train", tmp_path / "missing")
    _write_folder(tmp_path / "partial", images, np.arange(3))
    table = json.loads((tmp_path / "partial" / "dataset.json").read_text())
    (tmp_path / "partial" / "dataset.json").write_text(json.dumps({"labels": table["labels"][:2]}))
    with pytest.raises(DatasetError, match="no label"):
        load_dataset("imagefolder", "train", tmp_path / "partial")


def test_digits_are_what_scikit_learn_loads(monkeypatch):
    """The bundled CSV read without importing scikit-learn gives load_digits' arrays, and so does the fallback."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey, labels = ect.data.digits_arrays()
    assert grey.shape == (1797, 8, 8) and np.array_equal(grey, bunch.images)
    assert np.array_equal(labels, bunch.target)
    monkeypatch.setattr(ect.data.importlib.util, "find_spec", lambda name: None)  # a release that moved the file
    fallback_grey, fallback_labels = ect.data.digits_arrays()
    assert np.array_equal(fallback_grey, bunch.images) and np.array_equal(fallback_labels, bunch.target)
    train, heldout = load_dataset("digits", split="train"), load_dataset("digits", split="heldout")
    assert (len(train), len(heldout)) == (1500, 297)
