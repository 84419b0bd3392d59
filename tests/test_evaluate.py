"""``ect evaluate`` end to end on small checkpoints built here, and its checks before any sampling."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from test_datasets import write_cifar_archive

import ect.data
import ect.evaluation
import ect.metrics
from ect.checkpoint import CheckpointError, save_checkpoint
from ect.cli import METRIC_NAMES, add_evaluate_parser
from ect.data import CIFAR10_URL, DatasetError
from ect.evaluation import EvaluationError, run_evaluate
from ect.metrics import METRICS, MetricError
from ect.networks import build_network
from ect.sampling import SamplerError


def evaluate_all(*argv) -> list[dict]:
    """What ``ect evaluate …`` runs: one record per sampler and evaluation seed."""
    parser = argparse.ArgumentParser(prog="ect")
    add_evaluate_parser(parser.add_subparsers(dest="command", required=True))
    return run_evaluate(parser.parse_args(["evaluate", *map(str, argv)]))


def evaluate(*argv) -> dict:
    """``ect evaluate …`` with one sampler and one evaluation seed."""
    (record,) = evaluate_all(*argv)
    return record


def make_checkpoint(path: Path, kind: str, data: dict, sampling: dict | None = None, **overrides) -> Path:
    torch.manual_seed(0)
    state = build_network("tiny-s", **overrides).state_dict()
    config = {"data": data, **({"sampling": sampling} if sampling else {})}
    save_checkpoint(path, {
        "kind": kind,
        "network": {"preset": "tiny-s", "overrides": overrides},
        "ema": state,
        "net": state,
        "progress": {"iteration": 300, "images": 38_400, "flops": 1.5e12},
        "config": config,
    })  # fmt: skip
    return path


DIGITS = {"name": "digits", "split": "train", "data_dir": None}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "ect-cache"  # shared with test_metrics: the classifier trains once


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    make_checkpoint(root / "ect.pt", "consistency", DIGITS, sampling={"t_mid": [0.5]})
    make_checkpoint(root / "edm.pt", "diffusion", DIGITS)
    return root


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    md5, _ = write_cifar_archive(tmp_path / "cifar")
    monkeypatch.setattr(ect.data, "CIFAR10_MD5", md5)
    data = {"name": "cifar10", "split": "train", "data_dir": str(tmp_path / "cifar")}
    return make_checkpoint(tmp_path / "cifar.pt", "consistency", data, img_resolution=32, img_channels=3)


def test_cli_offers_every_metric():
    assert tuple(METRICS) == METRIC_NAMES


def test_evaluate_digits_end_to_end(workdir, cache_dir):
    common = ("--checkpoint", workdir / "ect.pt", "--metric", "fd_digits", "--num", 64, "--cache-dir",
              cache_dir, "--no-progress")
    record = evaluate(*common, "--sampler", "2step", "--batch", 64, "--out", workdir / "a.json")
    assert json.loads((workdir / "a.json").read_text()) == record
    assert record["metric"] == "fd_digits" and record["value"] > record["real_data"] > 0  # an untrained network
    assert record["sampler"] == {"sampler": "2step", "nfe": 2, "t_max": 80.0, "t_mids": [0.5]}  # config's t_mid
    assert (record["nfe"], record["num_samples"], record["seeds"]) == (2, 64, [0, 63])
    assert (record["checkpoint_kind"], record["network_preset"], record["num_parameters"]) == ("consistency",
                                                                                               "tiny-s", 66_089)
    assert (record["iteration"], record["training_images"], record["training_flops"]) == (300, 38_400, 1.5e12)
    assert (record["dataset"], record["reference_split"], record["real_split"]) == ("digits", "train", "heldout")
    assert record["numerics"]["precision"] == "fp32" and record["numerics"]["autocast_dtype"] is None  # auto: digits
    assert record["versions"]["torch_fidelity"] == torch_fidelity.__version__
    assert record["checkpoint"] == str((workdir / "ect.pt").resolve()) and record["wall_time_s"] > 0

    rebatched = evaluate(*common, "--sampler", "2step", "--batch", 7, "--out", workdir / "b.json")
    assert rebatched["value"] == pytest.approx(record["value"], rel=1e-5)  # per-seed sampling
    other_seeds = evaluate(*common, "--sampler", "2step", "--seed", 64, "--out", workdir / "c.json")
    assert other_seeds["seeds"] == [64, 127] and other_seeds["value"] != record["value"]


def test_one_call_evaluates_every_sampler_and_evaluation_seed(workdir, cache_dir):
    common = ("--checkpoint", workdir / "ect.pt", "--metric", "fd_digits", "--num", 32, "--cache-dir",
              cache_dir, "--no-progress")
    template = str(workdir / "many" / "{sampler}-fd_digits{seed}.json")
    records = evaluate_all(*common, "--sampler", "1step", "2step", "--eval-seed", 0, 2, "--out", template)
    written = sorted(p.name for p in (workdir / "many").iterdir())
    assert written == ["1step-fd_digits-seed2.json", "1step-fd_digits.json", "2step-fd_digits-seed2.json",
                       "2step-fd_digits.json"]
    by_key = {(r["sampler"]["sampler"], r["eval_seed"]): r for r in records}
    assert by_key[("2step", 2)]["seeds"] == [64, 95]  # evaluation seed K samples seeds K·num … (K+1)·num − 1
    assert json.loads((workdir / "many" / "2step-fd_digits-seed2.json").read_text()) == by_key[("2step", 2)]
    # The same numbers as one call per (sampler, evaluation seed): nothing is shared but the loaded network.
    alone = evaluate(*common, "--sampler", "2step", "--eval-seed", 2, "--out", workdir / "alone.json")
    assert alone["value"] == pytest.approx(by_key[("2step", 2)]["value"], rel=1e-6)
    assert by_key[("2step", 0)]["value"] != by_key[("2step", 2)]["value"]  # disjoint samples


@pytest.mark.parametrize("argv, message", [
    (["--sampler", "1step", "2step", "--out", "x.json"], "must contain {sampler}"),
    (["--sampler", "1step", "--eval-seed", 0, 1, "--out", "{sampler}.json"], "must contain {seed}"),
    (["--sampler", "1step", "1step", "--out", "{sampler}.json"], "must not repeat"),
    (["--sampler", "1step", "--eval-seed", -1, "--out", "x.json"], "non-negative"),
    (["--sampler", "1step", "--out", "{model}.json"], "only {sampler} and {seed}"),
])  # fmt: skip
def test_bad_output_templates_are_refused_before_any_work(workdir, tmp_path, argv, message):
    argv = [a if not isinstance(a, str) or not a.endswith(".json") else str(tmp_path / a) for a in argv]
    with pytest.raises(EvaluationError, match=re.escape(message)):
        evaluate("--checkpoint", workdir / "ect.pt", "--metric", "fd_digits", *argv)
    assert list(tmp_path.iterdir()) == []


def test_evaluate_diffusion_checkpoint(workdir, cache_dir):
    common = ("--checkpoint", workdir / "edm.pt", "--metric", "fd_digits", "--num", 8, "--cache-dir",
              cache_dir, "--no-progress")
    heun = evaluate(*common, "--sampler", "heun", "--out", workdir / "heun.json")
    assert heun["nfe"] == 35 and heun["sampler"]["heun_steps"] == 18 and heun["checkpoint_kind"] == "diffusion"
    baseline = evaluate(*common, "--sampler", "1step", "--out", workdir / "1step.json")  # the 1-step baseline
    assert baseline["nfe"] == 1 and baseline["real_data"] == heun["real_data"]


def test_evaluate_a_trainer_checkpoint(pretrained_tiny, cache_dir, tmp_path):
    record = evaluate("--checkpoint", pretrained_tiny, "--sampler", "heun", "--metric", "fd_digits", "--num", 16,
                      "--cache-dir", cache_dir, "--no-progress", "--out", tmp_path / "heun.json")
    assert (record["iteration"], record["training_images"], record["network_preset"]) == (20, 640, "tiny-s")
    assert record["training_flops"] > 0 and record["num_parameters"] == 66_089


@pytest.fixture
def no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampled before validating")

    monkeypatch.setattr(ect.evaluation, "generate_images", refuse)


def test_checks_before_sampling(workdir, cache_dir, cifar, tmp_path, no_sampling):
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    make_checkpoint(tmp_path / "wide.pt", "consistency", DIGITS, img_resolution=16)
    cases = [
        (tmp_path / "missing.pt", "1step", "fd_digits", (), CheckpointError, "not found"),
        (tmp_path / "corrupt.pt", "1step", "fd_digits", (), CheckpointError, "cannot read"),
        (workdir / "ect.pt", "heun", "fd_digits", (), SamplerError, "1step or 2step"),
        (workdir / "edm.pt", "2step", "fd_digits", (), SamplerError, "heun or 1step"),
        (workdir / "edm.pt", "1step", "fd_digits", ("--t-mid", 1.0), SamplerError, "2-step sampler only"),
        (workdir / "ect.pt", "1step", "fid", (), MetricError, "3-channel"),
        (cifar, "1step", "fd_digits", (), MetricError, "digits only"),
        (tmp_path / "wide.pt", "1step", "fd_digits", (), EvaluationError, r"makes \(1, 16, 16\) images"),
    ]
    for checkpoint, sampler, metric, extra, error, match in cases:
        with pytest.raises(error, match=match):
            evaluate("--checkpoint", checkpoint, "--sampler", sampler, "--metric", metric, *extra, "--cache-dir",
                     cache_dir, "--out", tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()

    # A digits checkpoint without a recorded t_mid: digits has no official one.
    make_checkpoint(tmp_path / "no-tmid.pt", "consistency", DIGITS)
    with pytest.raises(SamplerError, match="pass --t-mid"):
        evaluate("--checkpoint", tmp_path / "no-tmid.pt", "--sampler", "2step", "--metric", "fd_digits",
                 "--out", tmp_path / "never.json")


def test_offline_reference_and_weights_fail_before_sampling(cifar, tmp_path, no_sampling, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(MetricError) as info:
        evaluate("--checkpoint", cifar, "--sampler", "1step", "--metric", "fid", "--out", tmp_path / "x.json")
    assert tf_inception.URL_INCEPTION_V3 in str(info.value) and "--feature-weights" in str(info.value)

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DatasetError) as info:
        evaluate("--checkpoint", cifar, "--sampler", "1step", "--metric", "fid", "--data-dir", tmp_path / "empty",
                 "--out", tmp_path / "x.json")
    assert CIFAR10_URL in str(info.value) and str(tmp_path / "empty") in str(info.value)


def write_random_inception_weights(path: Path) -> Path:
    """A randomly initialised Inception-v3 state dict, standing in for torch-fidelity's downloaded weights."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
        torch.manual_seed(0)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return path


def trust_weights(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Accept ``path`` as if it were torch-fidelity's published Inception file (its sha256 prefix)."""
    monkeypatch.setattr(ect.metrics, "INCEPTION_SHA256_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])


def test_fid_end_to_end_with_local_weights(cifar, tmp_path, monkeypatch):
    weights = write_random_inception_weights(tmp_path / "inception.pth")
    trust_weights(monkeypatch, weights)
    # Inception's 64-d layer instead of 2,048: the same code path without a 2,048² eigendecomposition.
    monkeypatch.setitem(ect.metrics.METRICS, "fid", dataclasses.replace(ect.metrics.METRICS["fid"], layer="64"))
    record = evaluate("--checkpoint", cifar, "--sampler", "1step", "--metric", "fid", "--num", 6, "--batch", 4,
                      "--feature-weights", weights, "--cache-dir", tmp_path / "cache", "--no-progress",
                      "--out", tmp_path / "fid.json")
    assert record["value"] > 0 and record["real_data"] is None and record["reference_size"] == 20
    assert (record["feature_extractor"], record["feature_weights"]) == ("inception-v3-compat", str(weights))
    (stats,) = (tmp_path / "cache" / "stats").iterdir()
    assert stats.name.startswith("cifar10-train-inception-v3-compat-64-")


def test_a_run_trained_channels_last_samples_channels_last_with_the_same_images(tmp_path):
    from ect.checkpoint import load_checkpoint, network_from_checkpoint
    from ect.sampling import generate_images, sampler_spec

    path = make_checkpoint(tmp_path / "ect.pt", "consistency", DIGITS)
    data = load_checkpoint(path)
    plain = network_from_checkpoint(data)
    data["config"]["training"] = {"channels_last": True}
    fast = network_from_checkpoint(data)
    kernel = next(p for p in fast.parameters() if p.ndim == 4 and p.shape[-1] > 1 and p.shape[1] > 1)
    assert kernel.is_contiguous(memory_format=torch.channels_last) and not kernel.is_contiguous()
    spec = sampler_spec("2step", 0.5)
    images = [generate_images(net, spec, range(8), progress=False)[0] for net in (plain, fast)]
    # Another convolution order: the same images up to rounding at a quantisation boundary.
    assert abs(images[0].astype(int) - images[1].astype(int)).max() <= 1
