"""End to end through the command line: digits pretrain → tune → sample, and clean errors."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from ect.cli import main

SMALL = ["--set", "network.preset=tiny-s", "--set", "training.batch_size=32", "--set", "training.log_every=10",
         "--set", "sampling.grid_size=16", "--no-progress"]


@pytest.mark.slow
def test_pretrain_tune_sample(tmp_path, capsys):
    pre, ect = tmp_path / "pre", tmp_path / "ect"
    assert main(["pretrain", "--config", "digits-pretrain", "--out", str(pre), "--set", "training.iterations=30",
                 *SMALL]) == 0
    assert main(["tune", "--config", "digits-tune", "--init", str(pre / "snapshot-0000030.pt"), "--out", str(ect),
                 "--set", "training.iterations=20", "--set", "training.budgets=[10]", "--set", "ect.stage_length=10",
                 *SMALL]) == 0
    for run, last in ((pre, 30), (ect, 20)):
        assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
        log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        assert log[-1]["iteration"] == last and all(np.isfinite(r["loss"]) for r in log)
        grid = PIL.Image.open(run / f"samples-{last:07d}.png")
        assert grid.size[0] >= 64 and np.asarray(grid).std() > 0  # a visible, non-blank grid
    assert sorted(p.name for p in ect.glob("snapshot-*.pt")) == ["snapshot-0000010.pt", "snapshot-0000020.pt"]
    log = [json.loads(x) for x in (ect / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == [0, 1]

    out = tmp_path / "samples.npz"
    assert main(["sample", "--checkpoint", str(ect / "snapshot-0000020.pt"), "--sampler", "2step", "--num", "10",
                 "--seed", "5", "--batch", "4", "--out", str(out)]) == 0
    data = np.load(out)
    assert data["images"].shape == (10, 1, 8, 8) and data["images"].dtype == np.uint8
    assert data["seeds"].tolist() == list(range(5, 15))
    assert out.with_suffix(".png").is_file()
    # Same seeds, different batch size: identical images.
    again = tmp_path / "again.npz"
    main(["sample", "--checkpoint", str(ect / "snapshot-0000020.pt"), "--sampler", "2step", "--num", "3",
          "--seed", "7", "--out", str(again)])
    np.testing.assert_array_equal(np.load(again)["images"], data["images"][2:5])
    # The Heun sampler evaluates the diffusion model; a consistency checkpoint is refused.
    assert main(["sample", "--checkpoint", str(pre / "snapshot-0000030.pt"), "--sampler", "heun", "--num", "4",
                 "--out", str(tmp_path / "heun.png")]) == 0
    assert main(["sample", "--checkpoint", str(ect / "snapshot-0000020.pt"), "--sampler", "heun", "--num", "4",
                 "--out", str(tmp_path / "bad.png")]) == 2
    assert "heun does not apply to a consistency checkpoint" in capsys.readouterr().err
    # Evaluation prints the distance next to what as many real images score.
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ect / "snapshot-0000020.pt"), "--sampler", "1step", "--metric",
                 "fd_digits", "--num", "64", "--no-progress", "--out", str(tmp_path / "m.json")]) == 0
    line = capsys.readouterr().out
    record = json.loads((tmp_path / "m.json").read_text())
    assert f"fd_digits = {record['value']:.4g} (real data {record['real_data']:.4g}" in line
    assert record["iteration"] == 20 and record["nfe"] == 1 and record["num_samples"] == 64
    ckpt = torch.load(ect / "snapshot-0000020.pt", weights_only=True)
    assert ckpt["kind"] == "consistency" and ckpt["network"]["preset"] == "tiny-s"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["pretrain", "--config", "digits-pretrain", "--set", "ect.qq=3"], "ect.qq"),
        (["pretrain", "--config", "no-such-config.yaml"], "not found"),
        (["tune", "--config", "digits-tune", "--init", "missing.pt"], "checkpoint not found"),
        (["sample", "--checkpoint", "missing.pt", "--sampler", "1step"], "checkpoint not found"),
    ],
)
def test_errors_are_one_clear_line(tmp_path, capsys, argv, message):
    assert main([*argv, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_evaluate_errors_are_one_line(tmp_path, capsys, pretrained_tiny):
    argv = ["evaluate", "--checkpoint", str(pretrained_tiny), "--sampler", "2step", "--metric", "fd_digits",
            "--out", str(tmp_path / "m.json")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "2step" in err
    assert not (tmp_path / "m.json").exists()


def test_parser_is_light():
    # The command table names every command; building the parser imports neither torch nor pandas.
    import subprocess
    import sys

    code = ("import sys; from ect.cli import COMMANDS, build_parser; build_parser(); "
            "print(sorted(COMMANDS), 'torch' in sys.modules, 'pandas' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("]")[1].split() == ["False", "False"]
    for name in ("pretrain", "tune", "sample", "evaluate", "import", "prepare", "collect", "fit", "table", "figure"):
        assert f"'{name}'" in out
