"""End to end through the command line: digits pretrain → tune → sample, and clean errors."""

from __future__ import annotations

import json
import pickle

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
    for name in ("pretrain", "tune", "sample", "evaluate", "ref", "import", "prepare", "collect", "fit", "table",
                 "figure"):
        assert f"'{name}'" in out


def test_an_unknown_config_name_lists_the_presets(tmp_path, capsys):
    from ect.config import config_presets

    assert {"digits-pretrain", "digits-tune"} <= set(config_presets())
    assert main(["pretrain", "--config", "digits-pretrian", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "digits-pretrian" in err
    assert f"presets: {', '.join(config_presets())}" in err
    assert not (tmp_path / "run").exists()


class _RunsCode:
    """Unpickling this calls print: what torch's advice to retry with weights_only=False would let a file do."""

    def __reduce__(self):
        return print, ("code from the file ran",)


@pytest.mark.parametrize("content, reason", [
    (b"", "an empty file"),
    (b"not a checkpoint", "neither a torch checkpoint"),
    (pickle.dumps({"net": _RunsCode()}), "a Python pickle"),
    ("npz", "not one written by torch.save"),
])  # fmt: skip
def test_a_file_that_is_not_a_checkpoint_is_one_line_without_unsafe_advice(tmp_path, capsys, content, reason):
    path = tmp_path / "file.pt"
    if content == "npz":
        with path.open("wb") as f:
            np.savez(f, images=np.zeros((2, 1, 8, 8), np.uint8))
    else:
        path.write_bytes(content)
    assert main(["sample", "--checkpoint", str(path), "--sampler", "1step", "--out", str(tmp_path / "x.png")]) == 2
    captured = capsys.readouterr()
    assert f"cannot read checkpoint {path}: it" in captured.err and reason in captured.err
    assert captured.err.count("\n") == 1 and "weights_only" not in captured.err
    assert "code from the file ran" not in captured.out + captured.err


def test_tune_refuses_an_init_checkpoint_of_the_wrong_kind(tmp_path, capsys):
    from ect.checkpoint import save_checkpoint
    from ect.networks import build_network

    state = build_network("tiny-s").state_dict()
    snapshot = tmp_path / "ect-snapshot.pt"
    save_checkpoint(snapshot, {"kind": "consistency", "network": {"preset": "tiny-s", "overrides": {}}, "ema": state,
                               "net": state, "progress": {"iteration": 1, "images": 1, "flops": 1.0}, "config": {}})
    out = tmp_path / "run"
    assert main(["tune", "--config", "digits-tune", "--init", str(snapshot), "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert f"--init {snapshot} holds a consistency checkpoint, but --method ect starts from a diffusion" in err
    assert err.count("\n") == 1 and not out.exists()
