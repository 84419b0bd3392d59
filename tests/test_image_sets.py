"""Scoring any image set by the evaluation protocol (EDM's ``fid.py calc`` and ``ref``, ``generate.py --seeds``):
``ect evaluate --images``, ``ect ref``, ``ect evaluate --ref`` and ``ect sample --seeds --outdir``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from test_evaluate import DIGITS, evaluate, make_checkpoint

import ect.evaluation
from ect.cli import main
from ect.config import ConfigError, parse_seeds
from ect.data import DatasetError, load_dataset, quantize_to_levels
from ect.evaluation import EvaluationError
from ect.metric_specs import DIGITS_LEVELS
from ect.metrics import MetricError, feature_statistics, prepare_metric, read_reference
from ect.visualize import save_image_files


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "ect-cache"  # shared with test_metrics: the classifier trains once


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    """A tiny consistency checkpoint and what ``ect sample --seeds 0-63`` wrote from it: an .npz and PNGs."""
    root = tmp_path_factory.mktemp("image-sets")
    checkpoint = make_checkpoint(root / "ect.pt", "consistency", DIGITS, sampling={"t_mid": [0.5]})
    assert main(["sample", "--checkpoint", str(checkpoint), "--sampler", "2step", "--seeds", "0-63", "--batch", "64",
                 "--out", str(root / "samples.npz"), "--outdir", str(root / "pngs")]) == 0
    return root


def test_seed_ranges_read_as_edms_generate():
    assert parse_seeds("0-63") == list(range(64))
    assert parse_seeds("0,5,10-12") == [0, 5, 10, 11, 12]
    assert parse_seeds("7") == [7]
    for bad, message in (("5-3", "runs backwards"), ("1,x", "'x' is not a seed"), ("-1", "is not a seed"),
                         ("1,0-2", "seed 1 appears more than once"), ("", "is not a seed")):
        with pytest.raises(ConfigError, match=message):
            parse_seeds(bad)


def test_sample_writes_one_png_per_seed(sampled, tmp_path, capsys):
    data = np.load(sampled / "samples.npz")
    assert data["seeds"].tolist() == list(range(64)) and data["images"].shape == (64, 1, 8, 8)
    pngs = sorted((sampled / "pngs").iterdir())
    assert [p.name for p in pngs] == [f"{seed:06d}.png" for seed in range(64)]  # EDM's generate.py names
    for seed in (0, 17, 63):
        png = np.asarray(PIL.Image.open(sampled / "pngs" / f"{seed:06d}.png"))
        np.testing.assert_array_equal(png, data["images"][seed, 0])  # lossless, one 8×8 grey image per seed
    # A seed draws the same image whichever other seeds come with it.
    assert main(["sample", "--checkpoint", str(sampled / "ect.pt"), "--sampler", "2step", "--seeds", "17,40-41",
                 "--outdir", str(tmp_path / "few")]) == 0
    assert sorted(p.name for p in (tmp_path / "few").iterdir()) == ["000017.png", "000040.png", "000041.png"]
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "few" / "000041.png")), data["images"][41, 0])
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(sampled / "ect.pt"), "--sampler", "2step", "--seeds", "0-3", "--num",
                 "4", "--outdir", str(tmp_path / "never")]) == 2
    assert "either --seeds or --seed/--num" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_the_npz_ect_sample_wrote_scores_exactly_as_the_checkpoint(sampled, cache_dir, tmp_path):
    common = ("--metric", "fd_digits", "--batch", 64, "--cache-dir", cache_dir, "--no-progress")
    direct = evaluate("--checkpoint", sampled / "ect.pt", "--sampler", "2step", "--num", 64, *common,
                      "--out", tmp_path / "checkpoint.json")
    npz = evaluate("--images", sampled / "samples.npz", "--dataset", "digits", *common, "--out", tmp_path / "npz.json")
    pngs = evaluate("--images", sampled / "pngs", "--dataset", "digits", *common, "--out", tmp_path / "pngs.json")
    assert npz["value"] == pngs["value"] == direct["value"]  # the same uint8 images, the same protocol
    assert npz["real_data"] == direct["real_data"] and npz["num_samples"] == 64
    # The same record, its sampling fields saying where the images came from.
    assert set(npz) == set(direct) and json.loads((tmp_path / "npz.json").read_text()) == npz
    assert (npz["source"], npz["images"], npz["checkpoint"], npz["nfe"]) == (
        "images", str((sampled / "samples.npz").resolve()), None, None)
    assert npz["sampler"] == {"sampler": "images", "images": npz["images"]} and direct["source"] == "checkpoint"
    # NHWC under numpy's default key (OpenAI's evaluator files), and the first 32 images only.
    np.savez(tmp_path / "nhwc.npz", np.load(sampled / "samples.npz")["images"].transpose(0, 2, 3, 1))
    nhwc = evaluate("--images", tmp_path / "nhwc.npz", "--dataset", "digits", *common, "--out", tmp_path / "n.json")
    assert nhwc["value"] == direct["value"]
    first = evaluate("--images", tmp_path / "nhwc.npz", "--dataset", "digits", "--num", 32, *common,
                     "--out", tmp_path / "first.json")
    half = evaluate("--checkpoint", sampled / "ect.pt", "--sampler", "2step", "--num", 32, *common,
                    "--out", tmp_path / "half.json")
    assert first["value"] == half["value"] and first["num_samples"] == 32


def test_the_datasets_own_images_score_within_the_real_data_lines_noise(cache_dir, tmp_path):
    """Unseen real digits, written as PNGs and scored with --images, score what the real-data line predicts for as
    many images, within the spread of that score over other random subsets of the same size."""
    heldout = load_dataset("digits", "heldout").images
    n = len(heldout) // 2
    order = np.random.default_rng(1).permutation(len(heldout))
    save_image_files(heldout[order[:n]], list(range(n)), tmp_path / "real")
    record = evaluate("--images", tmp_path / "real", "--dataset", "digits", "--metric", "fd_digits", "--cache-dir",
                      cache_dir, "--no-progress", "--out", tmp_path / "real.json")
    metric = prepare_metric("fd_digits", "digits", cache_dir=cache_dir)
    assert record["num_samples"] == n and record["real_data"] == pytest.approx(metric.real_data(n), rel=1e-12)
    gen = np.random.default_rng(2)
    spread = np.std([metric.score(heldout[gen.permutation(len(heldout))[:n]]) for _ in range(16)], ddof=1)
    assert abs(record["value"] - record["real_data"]) <= 3 * spread
    # The band is narrow enough to tell: the same digits shifted by one pixel are far outside it.
    shifted = metric.score(np.roll(heldout[order[:n]], 1, axis=3))
    assert shifted - record["real_data"] > 10 * spread


@pytest.mark.parametrize("write, argv, error, message", [
    ("rgb", ("--dataset", "digits"), DatasetError, "3 channels at 8×8, but digits (train split) has 1 channel at 8×8"),
    ("wide", ("--dataset", "digits"), DatasetError, "1 channel at 16×16, but digits (train split) has 1 channel"),
    ("float", ("--dataset", "digits"), DatasetError, "images must be uint8 (0…255), got float32"),
    ("other-key", ("--dataset", "digits"), DatasetError, "holds samples; expected uint8 images under images or arr_0"),
    ("grey", (), EvaluationError, "--images needs --dataset NAME"),
    ("one-png", ("--dataset", "digits"), DatasetError, "expected a folder or .zip of images, or an .npz"),
    ("grey", ("--checkpoint", "ect.pt"), EvaluationError, "give either --checkpoint (sampled, then scored)"),
    ("grey", ("--dataset", "digits", "--sampler", "1step", "--seed", 3), EvaluationError,
     "--sampler, --seed choose how a checkpoint is sampled"),
    ("grey", ("--dataset", "digits", "--num", 5), EvaluationError, "--num 5, but --images"),
    ("grey", ("--dataset", "cifar10"), MetricError, "fd_digits applies to digits only"),
])  # fmt: skip
def test_an_image_set_that_does_not_fit_is_refused_naming_the_problem(tmp_path, monkeypatch, write, argv, error,
                                                                      message):
    def refuse(*args, **kwargs):
        raise AssertionError("features computed before the image set was checked")

    monkeypatch.setattr(ect.evaluation, "prepare_metric", refuse, raising=False)
    monkeypatch.setattr("ect.metrics.prepare_metric", refuse)
    grey = load_dataset("digits", "heldout").images[:4]
    path = tmp_path / ("images.npz" if write in ("float", "other-key") else "images")
    if write == "rgb":
        save_image_files(np.repeat(grey, 3, axis=1), list(range(4)), path)
    elif write == "wide":
        save_image_files(np.repeat(np.repeat(grey, 2, axis=2), 2, axis=3), list(range(4)), path)
    elif write == "float":
        np.savez(path, images=grey.astype(np.float32))
    elif write == "other-key":
        np.savez(path, samples=grey)
    elif write == "one-png":
        save_image_files(grey[:1], [0], tmp_path)
        path = tmp_path / "000000.png"
    else:
        save_image_files(grey, list(range(4)), path)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate("--images", path, "--metric", "fd_digits", *argv, "--out", tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def test_ref_of_the_dataset_scores_as_the_dataset_and_ref_of_an_image_set_scores_it(sampled, cache_dir, tmp_path):
    common = ("--metric", "fd_digits", "--cache-dir", str(cache_dir), "--no-progress")
    assert main(["ref", "--dataset", "digits", *common, "--out", str(tmp_path / "digits.npz")]) == 0
    ref = read_reference(tmp_path / "digits.npz")
    assert (ref.meta["count"], ref.meta["image_shape"], ref.meta["source"]["split"]) == (1500, [1, 8, 8], "train")
    by_dataset = evaluate("--images", sampled / "samples.npz", "--dataset", "digits", "--metric", "fd_digits",
                          "--cache-dir", cache_dir, "--no-progress", "--out", tmp_path / "a.json")
    by_file = evaluate("--images", sampled / "samples.npz", "--ref", tmp_path / "digits.npz", "--metric", "fd_digits",
                       "--cache-dir", cache_dir, "--no-progress", "--out", tmp_path / "b.json")
    assert by_file["value"] == by_dataset["value"]  # the very statistics ect evaluate caches for the dataset
    assert by_file["dataset"] == "digits" and by_file["real_data"] is None  # the real-data line is the dataset's
    assert by_file["reference_file"] == str((tmp_path / "digits.npz").resolve()) and by_file["reference_size"] == 1500
    # A checkpoint scored against a file.
    sampled_vs_file = evaluate("--checkpoint", sampled / "ect.pt", "--sampler", "2step", "--num", 64, "--ref",
                               tmp_path / "digits.npz", "--metric", "fd_digits", "--cache-dir", cache_dir,
                               "--no-progress", "--out", tmp_path / "c.json")
    assert sampled_vs_file["value"] == pytest.approx(by_file["value"], rel=1e-6)

    # An image set's statistics: the mean and covariance of its features; scored against itself, a distance of 0.
    assert main(["ref", "--images", str(sampled / "pngs"), *common, "--out", str(tmp_path / "own.npz")]) == 0
    own = read_reference(tmp_path / "own.npz")
    metric = prepare_metric("fd_digits", "digits", cache_dir=cache_dir)
    # As scored images are seen: on the digits' grey levels first.
    images = quantize_to_levels(np.load(sampled / "samples.npz")["images"], DIGITS_LEVELS)
    expected = feature_statistics(images, metric.extractor)
    np.testing.assert_allclose(own.stats["sigma"], expected["sigma"], rtol=1e-6, atol=1e-9)
    assert own.meta["count"] == 64 and own.meta["source"] == {"images": str((sampled / "pngs").resolve())}
    itself = evaluate("--images", sampled / "samples.npz", "--ref", tmp_path / "own.npz", "--metric", "fd_digits",
                      "--cache-dir", cache_dir, "--no-progress", "--out", tmp_path / "d.json")
    assert abs(itself["value"]) < 1e-6 * by_file["value"] and itself["dataset"] is None


def test_a_reference_file_that_does_not_fit_the_metric_is_refused(sampled, cache_dir, tmp_path):
    assert main(["ref", "--images", str(sampled / "samples.npz"), "--metric", "fd_digits", "--cache-dir",
                 str(cache_dir), "--no-progress", "--out", str(tmp_path / "own.npz")]) == 0
    own = read_reference(tmp_path / "own.npz")
    args = ("--images", sampled / "samples.npz", "--metric", "fd_digits", "--cache-dir", cache_dir, "--no-progress")

    # Bare mu/sigma (EDM's fid.py ref format) of the right dimension scores as the file with its meta.
    np.savez(tmp_path / "bare.npz", mu=own.stats["mu"], sigma=own.stats["sigma"])
    bare = evaluate(*args, "--ref", tmp_path / "bare.npz", "--dataset", "digits", "--out", tmp_path / "bare.json")
    assert abs(bare["value"]) < 1e-6 and bare["reference_size"] is None
    def with_meta(**changes) -> dict:
        return dict(mu=own.stats["mu"], sigma=own.stats["sigma"], meta=np.array(json.dumps({**own.meta, **changes})))

    cases = [
        (dict(mu=own.stats["mu"][:10], sigma=own.stats["sigma"][:10, :10]), "holds 10-d statistics, but fd_digits's "
         "features are 64-d"),
        (dict(mean=own.stats["mu"]), "not the reference statistics mu and sigma"),
        (with_meta(feature_weights_digest="0" * 32), "other digits-cnn weights"),
        (with_meta(metric="fid", extractor="inception-v3-compat", layer="2048"), "holds fid statistics"),
        (with_meta(format="something-else"), "its meta is not 'ect-reference-statistics'"),
    ]  # fmt: skip
    for arrays, message in cases:
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(MetricError, match=message.replace("(", r"\(")):
            evaluate(*args, "--ref", tmp_path / "bad.npz", "--dataset", "digits", "--out", tmp_path / "never.json")
    assert not (tmp_path / "never.json").exists()


def documented_commands(path: Path) -> list[list[str]]:
    """The ``ect`` commands of a Markdown file's ```bash blocks (continuation lines joined), as argument lists."""
    commands, block = [], False
    for line in path.read_text().replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            block = line.strip() == "```bash"
        elif block and shlex.split(line, comments=True)[:1] == ["ect"]:
            commands.append(shlex.split(line, comments=True)[1:])
    return commands


@pytest.mark.slow
def test_the_evaluation_docs_commands_run(tmp_path, monkeypatch, capsys):
    """docs/evaluation.md, run as written on a stand-in checkpoint at the path it uses."""
    commands = documented_commands(Path(__file__).resolve().parents[1] / "docs" / "evaluation.md")
    assert [c[0] for c in commands] == ["evaluate", "sample", "evaluate", "evaluate", "ref", "ref", "evaluate",
                                        "evaluate"]
    monkeypatch.chdir(tmp_path)
    snapshot = tmp_path / "results" / "digits" / "tune" / "tiny-m" / "snapshot-0000750.pt"
    snapshot.parent.mkdir(parents=True)
    make_checkpoint(snapshot, "consistency", DIGITS, sampling={"t_mid": [0.4], "t_max": 20.0})
    for argv in commands:
        assert main([*argv, "--no-progress"] if argv[0] in ("evaluate", "ref") else argv) == 0, argv
    # What the page says: the samples ect sample wrote score exactly as the checkpoint's own evaluation.
    sampled = json.loads((tmp_path / "eval" / "2step-fd_digits.json").read_text())
    scored = json.loads((tmp_path / "samples-fd_digits.json").read_text())
    assert scored["value"] == sampled["value"] and scored["num_samples"] == 1500
    assert scored["images"] == str(tmp_path / "samples")
    assert len(list((tmp_path / "samples").glob("*.png"))) == 1500
    assert json.loads((tmp_path / "vs-my-set.json").read_text())["value"] < 1e-6 * sampled["value"]
