"""The Fréchet-distance core, the digits FD and its real-data line, the dgm-eval DINOv2 extractor, offline errors."""

from __future__ import annotations

import collections
import pickle
import urllib.error

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
import torchvision.transforms as T
from PIL import Image
from test_datasets import write_cifar_archive
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

import ect.data
import ect.metrics
from ect.data import ImageDataset, load_dataset, quantize_to_levels
from ect.metric_specs import DIGITS_LEVELS
from ect.metrics import (
    DINOV2_EXTRACTOR,
    DINOV2_URL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MetricError,
    create_extractor,
    dgm_preprocess,
    feature_statistics,
    fit_real_data,
    frechet_distance,
    prepare_metric,
    reference_statistics,
    train_digits_classifier,
)


class PixelExtractor(FeatureExtractorBase):
    """Features = the pixels themselves, so statistics can be checked against numpy directly."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    def forward(self, x):
        return (x.flatten(1).to(torch.float64),)

    @staticmethod
    def get_provided_features_list():
        return ("pixels",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "pixels"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 2, 2, dtype=torch.uint8)


if "test-pixels" not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor("test-pixels", PixelExtractor)


def numpy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Direct computation: ‖μa − μb‖² + tr(Σa + Σb − 2(Σa^½ Σb Σa^½)^½)."""
    mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a)
    cross = scipy.linalg.sqrtm(root @ s_b @ root).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * cross))


@pytest.fixture(scope="module")
def pixels():
    return create_extractor("test-pixels", "pixels")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "ect-cache"  # shared with test_evaluate: the classifier trains once


@pytest.fixture(scope="session")
def digits_metric(cache_dir):
    return prepare_metric("fd_digits", "digits", cache_dir=cache_dir)


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    var1, var2 = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()  # diagonal Gaussians
    got = frechet_distance({"mu": mu1, "sigma": np.diag(var1)}, {"mu": mu2, "sigma": np.diag(var2)})
    assert got == pytest.approx(exact, rel=1e-10)

    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = a @ a.T + np.eye(4), b @ b.T + 0.1 * np.eye(4)
    root = scipy.linalg.sqrtm(s1)
    exact = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(root @ s2 @ root).real)
    assert frechet_distance({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}) == pytest.approx(exact, rel=1e-9)


def test_statistics_and_distance_match_numpy(pixels):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (300, 1, 3, 3), dtype=np.uint8)
    b = np.clip(rng.normal(100, 40, (200, 1, 3, 3)), 0, 255).astype(np.uint8)
    stats_a, stats_b = feature_statistics(a, pixels), feature_statistics(b, pixels)
    flat_a, flat_b = a.reshape(300, -1).astype(np.float64), b.reshape(200, -1).astype(np.float64)
    np.testing.assert_allclose(stats_a["mu"], flat_a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats_a["sigma"], np.cov(flat_a, rowvar=False), rtol=1e-12)
    assert frechet_distance(stats_a, stats_b) == pytest.approx(numpy_frechet(flat_a, flat_b), rel=1e-8)


def test_statistics_do_not_depend_on_batching(pixels, digits_metric):
    images = load_dataset("digits", "heldout").images[:60]
    # Exact for pixels; float32 convolutions may round differently per batch shape.
    for extractor, tolerance in ((pixels, 1e-12), (digits_metric.extractor, 1e-5)):
        runs = [feature_statistics(images, extractor, batch_size) for batch_size in (1, 7, 25, 1000)]
        for stats in runs[1:]:
            for key in ("mu", "sigma"):
                scale = np.abs(runs[0][key]).max()
                np.testing.assert_allclose(stats[key], runs[0][key], rtol=0, atol=tolerance * scale)
    again = feature_statistics(images, digits_metric.extractor, 25)
    np.testing.assert_array_equal(again["sigma"], runs[2]["sigma"])  # deterministic


def test_reference_statistics_are_cached(pixels, tmp_path, monkeypatch):
    images = np.random.default_rng(2).integers(0, 256, (50, 1, 2, 2), dtype=np.uint8)
    dataset = ImageDataset("toy", images, split="train")
    first = reference_statistics(dataset, pixels, tmp_path)
    (path,) = (tmp_path / "stats").iterdir()
    assert path.name.startswith("toy-train-test-pixels-pixels-")

    def recompute(*args, **kwargs):
        raise AssertionError("statistics recomputed despite the cache")

    monkeypatch.setattr(ect.metrics, "feature_statistics", recompute)
    cached = reference_statistics(dataset, pixels, tmp_path)
    np.testing.assert_array_equal(cached["sigma"], first["sigma"])
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1
    with pytest.raises(AssertionError, match="recomputed"):  # other images, other cache entry
        reference_statistics(ImageDataset("toy", changed, split="train"), pixels, tmp_path)


def test_digits_classifier_is_accurate_and_deterministic(digits_metric, cache_dir):
    record = torch.load(cache_dir / "digits-cnn.pt", weights_only=True)
    assert record["heldout_accuracy"] >= 0.95
    net, accuracy = train_digits_classifier()
    assert accuracy == record["heldout_accuracy"]
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, record["state_dict"][name], rtol=0, atol=0)


def test_real_data_line_is_what_fresh_real_samples_score():
    """The a + b/n fit from subsets of M real samples predicts what N = 5M fresh real samples score.

    Gaussian features, so distances can be drawn at any N. Averaged over independent real sets (a fit inherits
    its set's noise), the prediction at N is within a fifth of the finite-sample bias (the M-sample value minus
    the N-sample value) of the direct average; the M-sample value itself, used as the line, is off by all of it.
    """
    rng = np.random.default_rng(0)
    dim, m, n = 16, 200, 1000
    mix = rng.normal(size=(dim, dim)) / 3

    def draw(k):
        return torch.from_numpy(rng.normal(size=(k, dim)) @ mix.T)

    def stats(x):
        return {"mu": x.mean(0).numpy(), "sigma": np.cov(x.numpy(), rowvar=False)}

    reference = stats(draw(20_000))
    fits = [fit_real_data(draw(m), reference, repeats=4, seed=i) for i in range(24)]
    direct = {k: np.mean([frechet_distance(stats(draw(k)), reference) for _ in range(24)]) for k in (m, n)}
    bias = direct[m] - direct[n]
    assert bias > 3 * direct[n]  # the finite-sample bias dominates at these sizes
    for k in (m, n):
        assert abs(np.mean([f.at(k) for f in fits]) - direct[k]) < 0.2 * bias
    assert fits[0].sizes[-1] == m and fits[0].slope > 0


def test_digits_fd_sanity(digits_metric):
    train, heldout = load_dataset("digits", "train").images, load_dataset("digits", "heldout").images
    real_m, real_n = digits_metric.real_data(len(heldout)), digits_metric.real_data(1500)
    assert 0 < real_n < real_m < 50  # more samples, less bias
    # The fit reproduces what the whole held-out split scores (one of the points it was fitted to).
    assert digits_metric.score(heldout) == pytest.approx(real_m, rel=0.1)
    rng = np.random.default_rng(3)
    noise = digits_metric.score(rng.integers(0, 256, (1500, 1, 8, 8), dtype=np.uint8))
    blurred = digits_metric.score(scipy.ndimage.uniform_filter(train, size=(1, 1, 3, 3)))
    shuffled = digits_metric.score(train.reshape(1500, 64)[:, rng.permutation(64)].reshape(train.shape))
    assert 10 * real_m < blurred < noise and shuffled > 10 * real_m and noise > 30 * real_m
    # Generated images are scored on the data's grey levels.
    smooth = np.clip(rng.normal(128, 60, (300, 1, 8, 8)), 0, 255).astype(np.uint8)
    assert digits_metric.score(smooth) == digits_metric.score(quantize_to_levels(smooth, DIGITS_LEVELS))


def test_metric_must_fit_the_dataset(tmp_path):
    with pytest.raises(MetricError, match="unknown metric"):
        prepare_metric("is", "digits")
    with pytest.raises(MetricError, match="3-channel"):
        prepare_metric("fid", "digits", cache_dir=tmp_path)
    with pytest.raises(MetricError, match="digits only"):
        prepare_metric("fd_digits", "cifar10", cache_dir=tmp_path)


def test_offline_weights_errors_name_url_and_option(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", offline)
    with pytest.raises(MetricError) as info:
        create_extractor("inception-v3-compat", "2048")
    assert tf_inception.URL_INCEPTION_V3 in str(info.value) and "--feature-weights" in str(info.value)

    monkeypatch.setattr(torch.hub, "load", offline)
    with pytest.raises(MetricError) as info:
        create_extractor(DINOV2_EXTRACTOR, "dinov2")
    assert DINOV2_URL in str(info.value) and "--feature-weights" in str(info.value)

    with pytest.raises(MetricError, match="not found"):
        create_extractor("inception-v3-compat", "2048", weights_path=tmp_path / "missing.pth")


def test_weights_that_are_a_pickle_are_refused_without_unsafe_advice(tmp_path):
    path = tmp_path / "digits-cnn.pt"
    path.write_bytes(pickle.dumps(collections.Counter("a pickle with a class")))
    with pytest.raises(MetricError) as info:
        create_extractor("digits-cnn", "penultimate", weights_path=path)
    message = str(info.value)
    assert f"({path}: it is a Python pickle" in message and "weights_only" not in message and "\n" not in message


def test_dgm_preprocess_is_dgm_evals_pil_bicubic():
    x = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (2, 3, 9, 9), dtype=np.uint8))
    ours = dgm_preprocess(x)
    assert ours.shape == (2, 3, 224, 224) and ours.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    dgm_eval = T.Compose([T.Resize((224, 224), T.InterpolationMode.BICUBIC), T.ToTensor(), T.Normalize(mean, std)])
    for image, got in zip(x, ours, strict=True):
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        direct = np.asarray(pil.resize((224, 224), Image.BICUBIC)).transpose(2, 0, 1) / 255
        torch.testing.assert_close(got, (torch.from_numpy(direct).float() - mean) / std, rtol=0, atol=1e-6)
        torch.testing.assert_close(got, dgm_eval(pil), rtol=0, atol=1e-6)
    # torch-fidelity's own dinov2 extractor resizes differently (TF1-style bilinear in float).
    tf1 = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(224, 224), align_corners=False)
    tf1 = (tf1 / 255 - mean) / std
    assert (tf1 - ours).abs().max() > 0.1


class StandInDinoV2(torch.nn.Module):
    """Test double for the hub model: ``model(x)`` gives per-image CLS features (a normalised patch average)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch_embed = torch.nn.Conv2d(3, 16, kernel_size=14, stride=14)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(self.patch_embed(x).flatten(2).mean(2))


@pytest.fixture
def backbone(monkeypatch):
    """A randomly initialised DINOv2 ViT-S/14 from a local copy of the hub code if there is one, else a stand-in."""
    hub_code = torch.hub.get_dir() + "/facebookresearch_dinov2_main"
    try:
        model = torch.hub.load(hub_code, "dinov2_vits14", source="local", pretrained=False).eval()
    except (OSError, ImportError):
        model = StandInDinoV2().eval()
    monkeypatch.setattr(ect.metrics, "load_dinov2", lambda weights_path=None: model)
    return model


def test_dinov2_extractor_end_to_end(backbone, tmp_path, monkeypatch):
    md5, batches = write_cifar_archive(tmp_path / "cifar")
    monkeypatch.setattr(ect.data, "CIFAR10_MD5", md5)
    extractor = create_extractor(DINOV2_EXTRACTOR, "dinov2")
    x = torch.from_numpy(batches["test_batch"][0].reshape(-1, 3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)[0], backbone(dgm_preprocess(x)))

    metric = prepare_metric("fd_dinov2", "cifar10", tmp_path / "cifar", cache_dir=tmp_path / "cache", batch_size=8)
    train = load_dataset("cifar10", "train", tmp_path / "cifar").images
    assert metric.reference_shape == (20, 3, 32, 32) and metric.real_data(20) is None
    assert abs(metric.score(train)) < 1e-6 * np.trace(metric.reference["sigma"])
    assert metric.score(x.numpy()) > 0.01 * np.trace(metric.reference["sigma"])
