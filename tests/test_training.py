"""Trainer: exact resume, DDP and gradient-accumulation equivalence, checkpoint contents, logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from ect.checkpoint import load_checkpoint
from ect.config import ConfigError, batch_split, load_run_config
from ect.files import sha256_file as file_sha256
from ect.runs import CHECKPOINT, read_state, snapshot_name, state_iterations, state_name
from ect.training import BatchIndices, learning_rate, stream_seed, train

TUNE = ["network.preset=tiny-s", "training.batch_size=16", "training.log_every=5", "training.checkpoint_every=5",
        "ect.stage_length=4", "sampling.grid_size=0"]


def _tune_cfg(*extra: str):
    return load_run_config("digits-tune", [*TUNE, "training.budgets=[]", *extra])


def _states(path):
    ckpt = load_checkpoint(path)
    return ckpt["net"], ckpt["ema"], ckpt["optimizer"]


def _assert_equal_states(a, b, exact=True):
    for sa, sb in zip(a[:2], b[:2], strict=True):
        assert sa.keys() == sb.keys()
        for k in sa:
            if exact:
                assert torch.equal(sa[k], sb[k]), k
            else:
                torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5, msg=k)


def test_resume_is_bit_identical(tmp_path, pretrained_tiny):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_tune_cfg("training.iterations=12"), "ect", straight, init=pretrained_tiny, progress=False)
    # Interrupted after the checkpoint at iteration 5 (the 7-iteration run stops at 7 and checkpoints at 5 and 7):
    train(_tune_cfg("training.iterations=7"), "ect", resumed, init=pretrained_tiny, progress=False)
    with (resumed / "log.jsonl").open("a") as f:  # a line logged after the checkpoint, before a crash
        f.write(json.dumps({"iteration": 9, "loss": -1.0}) + "\n")
    train(_tune_cfg("training.iterations=12"), "ect", resumed, init=pretrained_tiny, progress=False)
    a, b = _states(straight / "checkpoint.pt"), _states(resumed / "checkpoint.pt")
    _assert_equal_states(a, b, exact=True)
    assert a[2]["state"].keys() == b[2]["state"].keys()
    for k in a[2]["state"]:
        for name, value in a[2]["state"][k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[2]["state"][k][name]))
    # The log of the resumed run is continuous and identical in its training quantities.
    la = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (resumed / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in la] == [5, 10, 12]
    assert [r["iteration"] for r in lb] == [5, 7, 10, 12]  # the first run ended (and logged) at 7
    assert la[-1]["loss"] == lb[-1]["loss"] and la[-1]["flops"] == lb[-1]["flops"]


def test_segment_chain_matches_one_run(tmp_path, pretrained_tiny, capsys):
    """The workflow's segments (one `ect tune` per budget, each continuing the run) give the same snapshots,
    bit for bit, as one run to the largest budget; each segment leaves a state manifest naming its checkpoint."""
    one, chain = tmp_path / "one", tmp_path / "chain"
    train(_tune_cfg("training.iterations=18", "training.budgets=[6, 12]"), "ect", one, init=pretrained_tiny,
          progress=False)
    for budget in (6, 12, 18):  # checkpoint_every=5: each segment also resumes from a mid-segment checkpoint
        train(_tune_cfg(f"training.iterations={budget}"), "ect", chain, init=pretrained_tiny, progress=False)
        state = read_state(chain, budget)
        assert state["iteration"] == budget and state["snapshot"] == snapshot_name(budget)
        assert state["checkpoint_bytes"] == (chain / CHECKPOINT).stat().st_size
        assert state["checkpoint_sha256"] == file_sha256(chain / CHECKPOINT)
    for budget in (6, 12, 18):
        a, b = load_checkpoint(one / snapshot_name(budget)), load_checkpoint(chain / snapshot_name(budget))
        assert a["ema"].keys() == b["ema"].keys() and a["progress"] == b["progress"]
        for k in a["ema"]:
            assert torch.equal(a["ema"][k], b["ema"][k]), (budget, k)
    assert state_iterations(chain) == state_iterations(one) == [6, 12, 18]
    assert read_state(one, 18)["config_sha256"] == state["config_sha256"]  # iterations/budgets left out
    # Progress lines for a job log (one per log_every = 5 and at each segment's end).
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("ect tiny-s: iteration ")]
    assert [x.split()[3] for x in lines] == ["5/18", "10/18", "15/18", "18/18", "5/6", "6/6", "10/12", "12/12",
                                             "15/18", "18/18"]
    assert all(" img/s  ETA " in x and " loss " in x for x in lines)
    # A finished segment run again (its outputs removed, as Snakemake does before a rerun) writes them again
    # from the checkpoint without training; a budget below the run's progress is refused with what to do.
    (chain / snapshot_name(18)).unlink()
    (chain / state_name(18)).unlink()
    train(_tune_cfg("training.iterations=18"), "ect", chain, init=pretrained_tiny, progress=False)
    a, b = load_checkpoint(one / snapshot_name(18)), load_checkpoint(chain / snapshot_name(18))
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    assert read_state(chain, 18)["checkpoint_sha256"] == file_sha256(chain / CHECKPOINT)
    with pytest.raises(ConfigError, match="new run directory"):
        train(_tune_cfg("training.iterations=9"), "ect", chain, init=pretrained_tiny, progress=False)


def test_accumulation_matches_full_batch(tmp_path, pretrained_tiny):
    train(_tune_cfg("training.iterations=4", "network.dropout=0.0"), "ect", tmp_path / "full", init=pretrained_tiny,
          progress=False)
    train(_tune_cfg("training.iterations=4", "network.dropout=0.0", "training.batch_per_device=4"), "ect",
          tmp_path / "accum", init=pretrained_tiny, progress=False)
    _assert_equal_states(_states(tmp_path / "full" / "checkpoint.pt"), _states(tmp_path / "accum" / "checkpoint.pt"),
                         exact=False)


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, pretrained_tiny):
    sets = [*TUNE, "training.budgets=[]", "training.iterations=4", "network.dropout=0.0"]
    args = ["tune", "--config", "digits-tune", "--init", str(pretrained_tiny), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "ect.cli", *args, "--out", str(tmp_path / "one")], check=True, env=env)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "ect.cli", *args, "--out", str(tmp_path / "two")], check=True, env=env)
    one, two = load_checkpoint(tmp_path / "one" / "checkpoint.pt"), load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    _assert_equal_states((one["net"], one["ema"]), (two["net"], two["ema"]), exact=False)
    assert one["progress"]["images"] == two["progress"]["images"] == 64
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["iterations"] == 4


def test_checkpoints_logs_and_budgets(tmp_path, pretrained_tiny):
    out = tmp_path / "run"
    cfg = load_run_config("digits-tune", [*TUNE, "training.iterations=8", "training.budgets=[3, 6]",
                                          "sampling.grid_size=4"])
    summary = train(cfg, "ect", out, init=pretrained_tiny, progress=False)
    assert sorted(p.name for p in out.glob("snapshot-*.pt")) == ["snapshot-0000003.pt", "snapshot-0000006.pt",
                                                                   "snapshot-0000008.pt"]
    assert (out / "samples-0000006.png").is_file()
    # Snapshots are plain state dicts: loadable without unpickling any class.
    raw = torch.load(out / "snapshot-0000006.pt", weights_only=True)
    assert raw["kind"] == "consistency" and raw["progress"]["iteration"] == 6 and "optimizer" not in raw
    assert raw["progress"]["images"] == 6 * 16
    # FLOPs: forward per image × (3 for forward+backward, +1 for the target pass) × images.
    fwd = raw["progress"]["flops_per_image_forward"]
    assert fwd > 0 and raw["progress"]["flops"] == pytest.approx(4 * fwd * 6 * 16, rel=0.26)
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [5, 8]
    assert {"iteration", "images", "loss", "stage", "r_over_t", "lr", "img_per_s", "elapsed_s", "flops"} <= set(log[0])
    assert log[-1]["stage"] == 1 and 0 < log[-1]["r_over_t"] < 1
    assert summary["budgets"] == [3, 6, 8]
    # Tuning starts from the pretrained EMA weights.
    init = load_checkpoint(pretrained_tiny)
    assert init["kind"] == "diffusion"


def test_misconfigured_runs_fail_before_training(tmp_path, pretrained_tiny):
    with pytest.raises(ConfigError, match="--init"):
        train(_tune_cfg(), "ect", tmp_path / "a")
    with pytest.raises(ConfigError, match="network.preset"):
        train(_tune_cfg("network.preset=tiny-m"), "ect", tmp_path / "b", init=pretrained_tiny)
    train(_tune_cfg("training.iterations=2"), "ect", tmp_path / "c", init=pretrained_tiny, progress=False)
    with pytest.raises(ConfigError, match="ect.q"):
        train(_tune_cfg("training.iterations=4", "ect.q=4"), "ect", tmp_path / "c", init=pretrained_tiny)
    assert (tmp_path / "c" / "snapshot-0000002.pt").is_file()  # nothing already computed is lost


def test_batch_indices_cover_each_epoch_once():
    b = BatchIndices(n=10, batch_size=4, seed=3)
    seen = torch.tensor([int(i) for it in range(5) for i in b(it)])  # 20 samples = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert (b(2) == BatchIndices(10, 4, 3)(2)).all()


def test_tuning_does_not_replay_its_teachers_draws():
    """Same training.seed, different method: other batches (and so other noise), every iteration."""
    pretrain, tune = (BatchIndices(1500, 64, stream_seed(0, method)) for method in ("diffusion", "ect"))
    assert all((pretrain(it) != tune(it)).any() for it in range(20))
    assert stream_seed(0, "ect") == stream_seed(0, "ect") != stream_seed(1, "ect")


def test_learning_rate_schedule():
    cfg = load_run_config("digits-tune", ["optimizer.lr=1e-3", "optimizer.decay_iterations=100",
                                          "optimizer.rampup_iterations=10"])
    assert learning_rate(cfg, 5) == pytest.approx(5e-4)
    assert learning_rate(cfg, 50) == pytest.approx(1e-3)
    assert learning_rate(cfg, 400) == pytest.approx(1e-3 / 2)


def test_flop_count_on_meta_equals_real_count():
    from torch.utils.flop_counter import FlopCounterMode

    from ect.flops import forward_flops_per_image
    from ect.networks import build_network

    net = build_network("tiny-m", label_dim=10)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 1, 8, 8), torch.ones(1), torch.zeros(1, 10))
    assert forward_flops_per_image("tiny-m", label_dim=10) == counter.get_total_flops() > 0
    # Paper-scale presets are counted without allocating their weights.
    assert forward_flops_per_image("ddpmpp-cifar10") > 1000 * forward_flops_per_image("tiny-m")


def test_flop_cache_counts_each_preset_once_and_follows_the_network_code(tmp_path, monkeypatch):
    from ect import flops

    counted = []
    count = flops.forward_flops_per_image
    monkeypatch.setattr(flops, "forward_flops_per_image", lambda preset: counted.append(preset) or count(preset))
    first = flops.cached_forward_flops_per_image("tiny-s", tmp_path)
    assert first == count("tiny-s") and counted == ["tiny-s"]
    assert flops.cached_forward_flops_per_image("tiny-s", tmp_path) == first and counted == ["tiny-s"]  # a hit
    # Another network code (another digest) is another key: counted again, the old entry kept.
    monkeypatch.setattr(flops, "flops_cache_key", lambda preset: f"{preset} changed-code")
    assert flops.cached_forward_flops_per_image("tiny-s", tmp_path) == first and counted == ["tiny-s"] * 2
    assert len(json.loads((tmp_path / "flops.json").read_text())) == 2
    # A damaged cache file only costs a count.
    (tmp_path / "flops.json").write_text("{not json")
    assert flops.cached_forward_flops_per_image("tiny-s", tmp_path) == first and len(counted) == 3


def test_imagenet_style_run_on_edm2(tmp_path):
    """The ImageNet recipe's code path at toy size: class-conditional EDM2 U-Net, forced weight
    normalisation with the target pass, power-function EMA, 1/t² + 1/σ_d² weighting, c > 0, q = 4,
    inverse-sqrt learning-rate decay."""
    common = ["network.preset=edm2-tiny", "data.conditional=true", "training.batch_size=8", "sampling.grid_size=4",
              "training.log_every=2"]
    train(load_run_config("digits-pretrain", [*common, "training.iterations=4"]), "diffusion", tmp_path / "pre",
          progress=False)
    cfg = load_run_config("digits-tune", [*common, "training.iterations=4", "training.budgets=[2]", "ema.kind=power",
                                          "ect.weighting=snr_plus_one", "ect.c=0.06", "ect.q=4",
                                          "ect.stage_length=2", "optimizer.decay_iterations=1",
                                          "optimizer.betas=[0.9, 0.99]"])
    train(cfg, "ect", tmp_path / "ect", init=tmp_path / "pre" / "snapshot-0000004.pt", progress=False)
    ckpt = load_checkpoint(tmp_path / "ect" / "snapshot-0000004.pt", kind="consistency")
    assert ckpt["network"]["overrides"]["label_dim"] == 10
    assert all(k.startswith("unet.") for k in ckpt["ema"])
    log = [json.loads(x) for x in (tmp_path / "ect" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["lr"] == pytest.approx(cfg.optimizer.lr / 3**0.5)  # iteration 3, decay over 1 iteration
    assert log[-1]["stage"] == 1 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_batch_split_over_processes_and_accumulation_rounds():
    assert batch_split(128, None, 1) == (128, 1)
    assert batch_split(128, 32, 4) == (32, 1)  # the official ImageNet S layout: 4 GPUs x 32
    assert batch_split(128, 8, 8) == (8, 2)  # 8 GPUs, two accumulation rounds of 8
    assert batch_split(128, 64, 8) == (16, 1)  # a cap above the per-process batch is no cap
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        batch_split(128, None, 3)
    with pytest.raises(ConfigError, match="batch_per_device 12 does not divide the per-process batch 32"):
        batch_split(128, 12, 4)


def test_a_run_that_predates_a_config_key_resumes_as_its_default(tmp_path, pretrained_tiny):
    run = tmp_path / "run"
    train(_tune_cfg("training.iterations=4", "sampling.t_max=80"), "ect", run, init=pretrained_tiny, progress=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["run"]["sampling"]["t_max"]  # as written before sampling.t_max existed
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"sampling.t_max: 80.0 in the existing run, 20.0 now"):
        train(_tune_cfg("training.iterations=6"), "ect", run, init=pretrained_tiny, progress=False)
    train(_tune_cfg("training.iterations=6", "sampling.t_max=80"), "ect", run, init=pretrained_tiny, progress=False)
    assert load_checkpoint(run / "checkpoint.pt")["progress"]["iteration"] == 6
