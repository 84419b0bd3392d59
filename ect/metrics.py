"""Fréchet distances between uint8 image sets, all through torch-fidelity 0.4.0.

One core serves every metric: features from a feature extractor registered with torch-fidelity
(``get_featuresdict_from_dataset``), their mean and covariance (``fid_featuresdict_to_statistics``) and the
distance between two such statistics (``fid_statistics_to_metric``). Reference statistics are cached per
(dataset, split, extractor), so scoring another checkpoint only costs its own samples.

    fid        inception-v3-compat, pool3 (2,048)      generated vs the full training set (EDM's fid50k_full)
    fd_dinov2  dinov2-vit-l-14-dgm, CLS token (1,024)  generated vs the full training set (dgm-eval's protocol)
    fd_digits  digits-cnn, penultimate layer (64)      generated vs the digits train split, next to what as many
                                                       unseen real digits score (``FrechetMetric.real_data``)

Cache layout (``$ECT_CACHE``, default ``~/.cache/ect``):

    digits-cnn.pt                                      the digits classifier (state dict, held-out accuracy)
    stats/{dataset}-{split}-{extractor}-{layer}-{hash}.npz   reference statistics (mu, sigma, count); the hash
                                                       covers the images and the extractor's weights
    flops.json                                         forward FLOPs per network preset (``ect.flops``)
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from PIL import Image
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from ect import files
from ect.checkpoint import first_nonfinite, load_failure
from ect.data import ImageDataset, load_dataset, quantize_to_levels
from ect.errors import UserError
from ect.metric_specs import DIGITS_EXTRACTOR, DINOV2_EXTRACTOR, INCEPTION_EXTRACTOR, METRICS, MetricSpec

DINOV2_REPO, DINOV2_MODEL = "facebookresearch/dinov2", "dinov2_vitl14"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
DINOV2_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DIGITS_MIN_ACCURACY = 0.95

# torch.hub names a published file by the first hex digits of its sha256 (torch.hub.check_hash): this prefix in
# torch-fidelity's file name is the only published hash of the Inception weights, so every copy (downloaded or
# given with --feature-weights) must match it. A different file of the same shapes (a retrained or perturbed
# network) is refused; the full digest of what was loaded goes into every evaluation record.
INCEPTION_SHA256_PREFIX = "6726825d"


class MetricError(UserError):
    """A metric is unknown, does not fit the data, or its feature extractor cannot be loaded."""


# --- The Fréchet-distance core --------------------------------------------------------------------------------


class _ImageArray(torch.utils.data.Dataset):
    """uint8 images [N, C, H, W] as the torch Dataset torch-fidelity reads (one uint8 tensor per item)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.images[i])


def _layer(extractor: FeatureExtractorBase) -> str:
    (layer,) = extractor.get_requested_features_list()
    return layer


def feature_array(
    images: np.ndarray, extractor: FeatureExtractorBase, batch_size: int = 250, progress: bool = False
) -> torch.Tensor:
    """The extractor's features of uint8 images [N, C, H, W], as a float64 [N, D] tensor."""
    # torch-fidelity moves batches to the GPU only when told; follow the extractor's own device.
    first = next(itertools.chain(extractor.parameters(), extractor.buffers()), None)
    cuda = first is not None and first.is_cuda
    # save_cpu_ram: no DataLoader worker processes, the images are already in memory. torch-fidelity moves
    # batches with .cuda(), i.e. to the current device: make that the extractor's (cuda:N).
    with torch.cuda.device(first.device) if cuda else contextlib.nullcontext():
        features = get_featuresdict_from_dataset(_ImageArray(images), extractor, batch_size, cuda, True, progress)
    # Moments in float64, as EDM's and dgm-eval's statistics are accumulated.
    return features[_layer(extractor)].double()


def _statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    return fid_featuresdict_to_statistics({"f": features}, "f")


def feature_statistics(
    images: np.ndarray, extractor: FeatureExtractorBase, batch_size: int = 250, progress: bool = False
) -> dict[str, np.ndarray]:
    """Mean and covariance of the extractor's features of uint8 images [N, C, H, W]."""
    return _statistics(feature_array(images, extractor, batch_size, progress))


def frechet_distance(stats1: dict[str, np.ndarray], stats2: dict[str, np.ndarray]) -> float:
    """‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), by torch-fidelity."""
    return float(fid_statistics_to_metric(stats1, stats2, verbose=False)[KEY_METRIC_FID])


@dataclass(frozen=True)
class RealDataFit:
    """FD(n) ≈ ``fd_inf`` + ``slope``/n for n unseen real images against the reference statistics."""

    fd_inf: float
    slope: float
    sizes: tuple[int, ...]  # subset sizes the fit used (the largest is the whole real split)

    def at(self, num: int) -> float:
        return self.fd_inf + self.slope / num


def fit_real_data(features: torch.Tensor, reference: dict[str, np.ndarray], repeats: int = 16,
                  seed: int = 0) -> RealDataFit:
    """What n unseen real images score against ``reference``, for any n, from the M real images' ``features``.

    A Fréchet distance from n samples is biased upwards by about c/n (Chong & Forsyth, "Effectively Unbiased FID
    and Inception Score and where to find them", CVPR 2020), so a real-data line measured with M images is not
    comparable with a model scored with N ≠ M samples. Averaging the distance of random subsets of sizes
    M/4 … M (drawn without replacement) and fitting a + b/n extrapolates to any n: with subsets of a finite set
    the fitted intercept and slope are, to O(1/M), those of fresh real draws, so a + b/N is what N real images
    score in expectation, i.e. what a model whose samples are as good as real data scores with N samples.
    """
    m = len(features)
    sizes = tuple(sorted({round(m * f) for f in (0.25, 0.375, 0.5, 0.625, 0.75, 0.875)} | {m}))
    gen = torch.Generator().manual_seed(seed)
    means = []
    for n in sizes:
        draws = 1 if n == m else repeats
        means.append(np.mean([frechet_distance(_statistics(features[torch.randperm(m, generator=gen)[:n]]),
                                               reference) for _ in range(draws)]))
    slope, fd_inf = np.polyfit(1.0 / np.array(sizes), np.array(means), 1)
    return RealDataFit(float(fd_inf), float(slope), sizes)


def weights_digest(module: torch.nn.Module) -> bytes:
    """blake2b of a module's state dict (names and bytes): identifies the feature extractor's weights."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.digest()


def reference_statistics(
    dataset: ImageDataset,
    extractor: FeatureExtractorBase,
    cache_dir: str | Path | None = None,
    batch_size: int = 250,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Feature statistics of a dataset split, computed once and cached under ``cache_dir/stats``.

    The file name hashes the images and the extractor weights, so a changed image folder or other weights
    never reuse stale statistics.
    """
    key = hashlib.blake2b(digest_size=8)
    key.update(str(dataset.images.shape).encode())
    key.update(np.ascontiguousarray(dataset.images))
    key.update(weights_digest(extractor))
    name = f"{dataset.name}-{dataset.split}-{extractor.get_name()}-{_layer(extractor)}-{key.hexdigest()}.npz"
    path = files.cache_dir(cache_dir or None) / "stats" / name
    if path.is_file():
        with np.load(path) as cached:
            return {"mu": cached["mu"], "sigma": cached["sigma"]}
    stats = feature_statistics(dataset.images, extractor, batch_size, progress)
    files.atomic_write_bytes(path, lambda f: np.savez(f, mu=stats["mu"], sigma=stats["sigma"], count=len(dataset)))
    return stats


# --- Feature extractors ---------------------------------------------------------------------------------------

_WEIGHTS_HINTS = {
    INCEPTION_EXTRACTOR: f"torch-fidelity downloads them from {URL_INCEPTION_V3} into torch.hub's checkpoint cache; "
    "without internet, fetch that file elsewhere and pass its path as feature_extractor_weights_path "
    "(`ect evaluate --feature-weights PATH`)",
    DINOV2_EXTRACTOR: f"torch.hub loads the code from github.com/{DINOV2_REPO} and the weights from {DINOV2_URL} "
    "into its cache ($TORCH_HOME/hub); without internet, fill that cache on a machine with internet, or pass the "
    "downloaded .pth (code from the cache) or a clone of the repository (weights from the cache) as "
    "feature_extractor_weights_path (`ect evaluate --feature-weights PATH`)",
    DIGITS_EXTRACTOR: "pass a digits-cnn.pt written by ect.metrics.digits_classifier_path, or no weights path to use "
    "(or train) the one in the cache directory",
}


def inception_weights_path(weights_path: str | Path | None = None) -> Path:
    """torch-fidelity's Inception weights file, downloaded into torch.hub's checkpoint cache unless given, after
    checking its sha256 against the published prefix."""
    if weights_path is None:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(URL_INCEPTION_V3).name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), hash_prefix=INCEPTION_SHA256_PREFIX)
    else:
        path = Path(weights_path)
    sha = files.sha256_file(path)
    if not sha.startswith(INCEPTION_SHA256_PREFIX):
        raise MetricError(f"{path} is not torch-fidelity's Inception weights file: its sha256 {sha} does not "
                          f"start with the published {INCEPTION_SHA256_PREFIX}")
    return path


class FeatureExtractorInceptionV3Safe(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception (same name, layers and forward pass), with weights from a verified file read
    with ``torch.load(weights_only=True)``: torch-fidelity itself unpickles a local file with
    ``weights_only=False``, so its loader is handed the already-read tensors instead."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs) -> None:
        path = inception_weights_path(feature_extractor_weights_path)
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        with mock.patch("torch.load", lambda *args, **kw: state_dict):
            super().__init__(name, features_list, feature_extractor_weights_path=str(path), **kwargs)


def create_extractor(
    name: str, layer: str, device: torch.device | str = "cpu", weights_path: str | Path | None = None
) -> FeatureExtractorBase:
    """A registered torch-fidelity feature extractor for one feature layer on ``device`` (cuda:N included), with a
    clear error when its weights cannot be loaded (offline, wrong path, corrupt or unverified file)."""
    kwargs = {"verbose": False}
    if weights_path is not None:
        if not Path(weights_path).exists():
            raise MetricError(f"feature extractor weights not found: {weights_path}")
        kwargs["feature_extractor_weights_path"] = str(weights_path)
    try:
        if name == INCEPTION_EXTRACTOR:
            extractor = FeatureExtractorInceptionV3Safe(name, [layer], **kwargs).requires_grad_(False).eval()
        else:
            extractor = create_feature_extractor(name, [layer], cuda=False, **kwargs)
    except MetricError:
        raise
    except Exception as exc:  # download, unpickling and state-dict errors alike
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
        if isinstance(exc, pickle.UnpicklingError) and weights_path is not None:  # without torch's unsafe advice
            reason = f"{weights_path}: {load_failure(weights_path, exc)}"
        hint = _WEIGHTS_HINTS.get(name, "")
        raise MetricError(f"cannot load the {name} feature extractor ({reason}); {hint}") from exc
    bad = first_nonfinite(extractor.state_dict())
    if bad is not None:
        raise MetricError(f"the {name} feature extractor's weights hold NaN or infinite values ({bad})")
    return extractor.to(device)


def dgm_preprocess(x: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] → float32 [B, 3, 224, 224] as dgm-eval feeds DINOv2.

    dgm-eval applies ``Resize((224, 224), BICUBIC)`` to the PIL image (PIL's bicubic, result rounded back to
    uint8), ``ToTensor`` (÷255) and ImageNet mean/std normalisation; no crop.
    """
    resized = [
        np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).resize((DINOV2_SIZE, DINOV2_SIZE), Image.BICUBIC))
        for image in x.cpu()
    ]
    out = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).to(torch.float32) / 255
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (out - mean) / std


def load_dinov2(weights_path: str | Path | None = None) -> torch.nn.Module:
    """DINOv2 ViT-L/14 as dgm-eval loads it, ``torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14")``.

    ``weights_path`` may instead name a local clone of the dinov2 repository (its ``hubconf.py`` builds the
    model and the weights come from torch.hub's checkpoint cache) or the official ``.pth`` state dict.
    """
    if weights_path is None:
        return torch.hub.load(DINOV2_REPO, DINOV2_MODEL, trust_repo=True)
    path = Path(weights_path)
    if path.is_dir():
        return torch.hub.load(str(path), DINOV2_MODEL, source="local")
    model = torch.hub.load(DINOV2_REPO, DINOV2_MODEL, pretrained=False, trust_repo=True)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


class FeatureExtractorDinoV2DGM(FeatureExtractorBase):
    """DINOv2 ViT-L/14 CLS features (1,024) with dgm-eval's preprocessing, as ECT's FD_DINOv2 was computed.

    torch-fidelity 0.4.0's own ``dinov2-vit-l-14`` differs in the resize: it interpolates the uint8 tensor to
    224×224 with TF1-style bilinear interpolation in float, where dgm-eval resizes the PIL image with bicubic
    interpolation and rounds back to uint8 (see :func:`dgm_preprocess`). Both normalise with ImageNet mean/std,
    do not crop, and take the hub model's output, i.e. its (identity) head on the CLS token after the final norm.
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs) -> None:
        super().__init__(name, features_list)
        self.model = load_dinov2(feature_extractor_weights_path)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects uint8 RGB images [B, 3, H, W], got {x.dtype} {tuple(x.shape)}")
        features = self.model(dgm_preprocess(x).to(x.device))
        return (features.to(torch.float32),)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("dinov2",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "dinov2"

    @staticmethod
    def can_be_compiled() -> bool:
        return False  # the PIL resize runs outside the graph

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


class DigitsCNN(torch.nn.Module):
    """A small digits classifier: 2 convolutions and a 64-unit hidden layer, whose activations are the features."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(64 * 4 * 4, 64), torch.nn.ReLU(),
        )  # fmt: skip
        self.head = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _digits_input(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32) / 127.5 - 1


def train_digits_classifier(seed: int = 0, epochs: int = 30, batch_size: int = 128) -> tuple[DigitsCNN, float]:
    """Train :class:`DigitsCNN` on the digits train split (seeded); returns it and its held-out accuracy."""
    train, heldout = load_dataset("digits", "train"), load_dataset("digits", "heldout")
    order = np.random.default_rng(seed)
    with torch.random.fork_rng():  # seed the initialisation without touching the caller's RNG
        torch.manual_seed(seed)
        net = DigitsCNN()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = _digits_input(torch.from_numpy(train.images)), torch.from_numpy(train.labels)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small trains several times faster on one thread (and deterministically)
    try:
        for _ in range(epochs):
            for idx in np.array_split(order.permutation(len(x)), -(-len(x) // batch_size)):
                loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    net.eval().requires_grad_(False)
    predictions = net(_digits_input(torch.from_numpy(heldout.images))).argmax(1).numpy()
    return net, float((predictions == heldout.labels).mean())


def digits_classifier_path(cache_dir: str | Path | None = None) -> Path:
    """The cached digits classifier, trained on first use (a few seconds on a CPU)."""
    path = files.cache_dir(cache_dir or None) / "digits-cnn.pt"
    if not path.is_file():
        net, accuracy = train_digits_classifier()
        if accuracy < DIGITS_MIN_ACCURACY:
            raise RuntimeError(f"digits classifier reached only {accuracy:.1%} held-out accuracy "
                               f"(need {DIGITS_MIN_ACCURACY:.0%}); its features would be a poor metric")
        record = {"state_dict": net.state_dict(), "heldout_accuracy": accuracy}
        files.atomic_write_bytes(path, lambda f: torch.save(record, f))
    return path


class FeatureExtractorDigitsCNN(FeatureExtractorBase):
    """The digits classifier's penultimate 64-d activations (and logits), for uint8 [B, 1, 8, 8] digits."""

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs) -> None:
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{name} needs feature_extractor_weights_path (see digits_classifier_path)")
        record = torch.load(feature_extractor_weights_path, map_location="cpu", weights_only=True)
        self.net = DigitsCNN()
        self.net.load_state_dict(record["state_dict"])
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.net.features(_digits_input(x))
        out = {"penultimate": hidden, "logits": self.net.head(hidden)}
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("penultimate", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "penultimate"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)


for _name, _cls in ((DINOV2_EXTRACTOR, FeatureExtractorDinoV2DGM), (DIGITS_EXTRACTOR, FeatureExtractorDigitsCNN)):
    if _name not in FEATURE_EXTRACTORS_REGISTRY:  # torch-fidelity refuses a second registration
        register_feature_extractor(_name, _cls)


# --- Metrics --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrechetMetric:
    """A metric ready to score generated images: extractor loaded, reference statistics (and the real-data
    reference line, for metrics with a ``real_split``) computed or read from a file (``ect ref``)."""

    name: str
    spec: MetricSpec
    extractor: FeatureExtractorBase
    reference: dict[str, np.ndarray]
    reference_shape: tuple[int, ...] | None  # N, C, H, W of the reference images; None for a bare mu/sigma file
    real_data_fit: RealDataFit | None
    batch_size: int
    weights_digest: str  # of the feature extractor's weights, recorded with every score

    def real_data(self, num: int) -> float | None:
        """What ``num`` unseen real images score, in expectation (None without a ``real_split``)."""
        return None if self.real_data_fit is None else self.real_data_fit.at(num)

    def score(self, images: np.ndarray, progress: bool = False) -> float:
        stats = image_statistics(self.spec, self.extractor, images, self.batch_size, progress)
        return frechet_distance(stats, self.reference)


def image_statistics(spec: MetricSpec, extractor: FeatureExtractorBase, images: np.ndarray, batch_size: int = 250,
                     progress: bool = False) -> dict[str, np.ndarray]:
    """Feature statistics of scored uint8 images [N, C, H, W] as the metric sees them (digits: on the data's
    levels first)."""
    if spec.levels is not None:
        images = quantize_to_levels(images, spec.levels)
    return feature_statistics(images, extractor, batch_size, progress)


def metric_spec(name: str, dataset: str | None = None) -> MetricSpec:
    """The metric ``name``, checked to apply to ``dataset`` (when one is named)."""
    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}; choose from {', '.join(METRICS)}")
    spec = METRICS[name]
    if dataset is not None and spec.datasets is not None and dataset not in spec.datasets:
        raise MetricError(f"{name} applies to {', '.join(spec.datasets)} only, not to {dataset!r}")
    return spec


def metric_extractor(spec: MetricSpec, device: torch.device | str = "cpu", cache_dir: str | Path | None = None,
                     weights_path: str | Path | None = None) -> FeatureExtractorBase:
    """The metric's feature extractor on ``device`` (the digits classifier: the cached one unless given)."""
    if spec.extractor == DIGITS_EXTRACTOR and weights_path is None:
        weights_path = digits_classifier_path(cache_dir)
    return create_extractor(spec.extractor, spec.layer, device, weights_path)


def prepare_metric(
    name: str,
    dataset: str,
    data_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    weights_path: str | Path | None = None,
    batch_size: int = 250,
    progress: bool = False,
) -> FrechetMetric:
    """Check that metric ``name`` fits ``dataset``, load its extractor and reference statistics (cached).

    Everything that can fail for lack of data or weights fails here, before any sampling.
    """
    spec = metric_spec(name, dataset)
    reference = load_dataset(dataset, spec.reference_split, data_dir)
    if reference.channels != spec.channels:
        raise MetricError(f"{name} needs {spec.channels}-channel images; {dataset} has {reference.channels}")
    extractor = metric_extractor(spec, device, cache_dir, weights_path)
    stats = reference_statistics(reference, extractor, cache_dir, batch_size, progress)
    fit = None
    if spec.real_split is not None:
        real = load_dataset(dataset, spec.real_split, data_dir)
        fit = fit_real_data(feature_array(real.images, extractor, batch_size, progress), stats)
    return FrechetMetric(name, spec, extractor, stats, reference.images.shape, fit, batch_size,
                         weights_digest(extractor).hex())


# --- Reference statistics files (``ect ref``) -------------------------------------------------------------------

REFERENCE_FORMAT = "ect-reference-statistics"


@dataclass(frozen=True)
class ReferenceFile:
    """Reference statistics read from an ``.npz``: ``ect ref``'s (mu, sigma and what they were computed from, in
    ``meta``) or a bare one holding only ``mu`` and ``sigma`` (EDM's ``fid.py ref``; ``meta`` is None)."""

    path: Path
    stats: dict[str, np.ndarray]
    meta: dict | None

    @property
    def image_shape(self) -> tuple[int, ...] | None:
        return None if self.meta is None else tuple(self.meta["image_shape"])

    @property
    def dataset(self) -> str | None:
        return None if self.meta is None else self.meta["source"].get("dataset")


def write_reference(path: str | Path, stats: dict[str, np.ndarray], meta: dict) -> None:
    """Write reference statistics atomically as an ``.npz``: ``mu``, ``sigma`` (the keys EDM's ``fid.py`` uses)
    and ``meta``, a JSON string naming the metric, extractor, weights, image shape, count and source."""
    meta_json = np.array(json.dumps({"format": REFERENCE_FORMAT, **meta}, sort_keys=True))
    files.atomic_write_bytes(path, lambda f: np.savez(f, mu=stats["mu"], sigma=stats["sigma"], meta=meta_json))


def read_reference(path: str | Path) -> ReferenceFile:
    """Read reference statistics written by ``ect ref`` (or a bare mu/sigma ``.npz``), checking their shapes."""
    path = Path(path)
    if not path.is_file():
        raise MetricError(f"--ref {path}: file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as exc:  # not an npz, or one holding pickled objects
        raise MetricError(f"--ref {path}: not an .npz of reference statistics ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else 'unreadable'})") from exc
    if "mu" not in arrays or "sigma" not in arrays:
        raise MetricError(f"--ref {path}: holds {', '.join(sorted(arrays)) or 'nothing'}, not the reference "
                          "statistics mu and sigma (`ect ref` writes them)")
    mu, sigma = arrays["mu"], arrays["sigma"]
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise MetricError(f"--ref {path}: mu {mu.shape} and sigma {sigma.shape} are not a finite mean and covariance")
    meta = json.loads(str(arrays["meta"])) if "meta" in arrays else None
    if meta is not None and meta.get("format") != REFERENCE_FORMAT:
        raise MetricError(f"--ref {path}: its meta is not {REFERENCE_FORMAT!r}")
    return ReferenceFile(path, {"mu": mu.astype(np.float64), "sigma": sigma.astype(np.float64)}, meta)


def reference_metric(
    name: str,
    reference: ReferenceFile,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    weights_path: str | Path | None = None,
    batch_size: int = 250,
) -> FrechetMetric:
    """Metric ``name`` scored against statistics from a file: refused unless the file was computed with the same
    extractor, layer and weights (an ``ect ref`` file) or has the extractor's feature dimension (a bare file)."""
    spec = metric_spec(name)
    meta = reference.meta
    if meta is not None and (meta["metric"], meta["extractor"], meta["layer"]) != (name, spec.extractor, spec.layer):
        raise MetricError(f"--ref {reference.path} holds {meta['metric']} statistics ({meta['extractor']}, layer "
                          f"{meta['layer']}), not {name} ({spec.extractor}, layer {spec.layer})")
    extractor = metric_extractor(spec, device, cache_dir, weights_path)
    digest = weights_digest(extractor).hex()
    if meta is not None and meta["feature_weights_digest"] != digest:
        raise MetricError(f"--ref {reference.path} was computed with other {spec.extractor} weights (digest "
                          f"{meta['feature_weights_digest']}, these are {digest}); compute it again with `ect ref`")
    if meta is None:
        shape = (2, spec.channels, *_PROBE_SIZE.get(spec.extractor, (32, 32)))
        dim = feature_array(np.zeros(shape, np.uint8), extractor).shape[1]
        if len(reference.stats["mu"]) != dim:
            raise MetricError(f"--ref {reference.path} holds {len(reference.stats['mu'])}-d statistics, but {name}'s "
                              f"features are {dim}-d")
    ref_shape = None if meta is None else (meta["count"], *meta["image_shape"])
    return FrechetMetric(name, spec, extractor, reference.stats, ref_shape, None, batch_size, digest)


# Image size a feature extractor can be probed with (its feature dimension), where any size will not do.
_PROBE_SIZE = {DIGITS_EXTRACTOR: (8, 8)}
