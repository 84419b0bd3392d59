"""Reliability (fast cases): divergence, preemption, one writer per run, damaged checkpoints, malformed input,
umask, verified feature-extractor weights. The slow fault injection is scripts/fault_injection.py."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import signal
import stat

import pytest
import torch
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

import ect.files
import ect.metrics
import ect.objectives
from ect.checkpoint import (
    CheckpointError,
    DamagedCheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    load_resume_checkpoint,
    previous_path,
    save_checkpoint,
)
from ect.cli import main
from ect.config import ConfigError, load_run_config
from ect.distributed import resolve_device
from ect.guard import PREEMPTED_EXIT, DivergenceError, PreemptedError, RunLock
from ect.metrics import MetricError, create_extractor
from ect.training import train

SMALL = ["network.preset=tiny-s", "training.batch_size=16", "training.log_every=5", "training.checkpoint_every=5",
         "ect.stage_length=4", "sampling.grid_size=0", "training.budgets=[]"]


def _cfg(*extra: str):
    return load_run_config("digits-tune", [*SMALL, *extra])


def _on_call(monkeypatch, n: int, action) -> None:
    """Run ``action(loss)`` on the n-th call of the consistency loss (iteration n with one accumulation round)."""
    real, calls = ect.objectives.consistency_loss, [0]

    def loss(*args, **kwargs):
        calls[0] += 1
        value = real(*args, **kwargs)
        return action(value) if calls[0] == n else value

    monkeypatch.setattr(ect.objectives, "consistency_loss", loss)


def _weights(path):
    ckpt = load_checkpoint(path)
    return {k: v for k, v in ckpt["net"].items()}, ckpt["progress"]["iteration"]


# --- Divergence -----------------------------------------------------------------------------------------------


def test_nonfinite_loss_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path, pretrained_tiny,
                                                                                       monkeypatch):
    reference = tmp_path / "reference"
    train(_cfg("training.iterations=5"), "ect", reference, init=pretrained_tiny, progress=False)
    run = tmp_path / "run"
    _on_call(monkeypatch, 7, lambda loss: loss * float("nan"))
    with pytest.raises(DivergenceError, match="non-finite loss at iteration 7"):
        train(_cfg("training.iterations=10", "training.budgets=[8]"), "ect", run, init=pretrained_tiny,
              progress=False)
    net, it = _weights(run / "checkpoint.pt")
    assert it == 5  # the bad iterations 7…10 never reached a file
    assert all(torch.equal(net[k], v) for k, v in _weights(reference / "checkpoint.pt")[0].items())
    assert not list(run.glob("snapshot-*.pt"))
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(ln)["iteration"] for ln in lines] == [5]


def test_divergence_from_a_huge_learning_rate_exits_nonzero(tmp_path, pretrained_tiny, capsys):
    status = main(["tune", "--config", "digits-tune", "--init", str(pretrained_tiny), "--out", str(tmp_path / "r"),
                   "--no-progress", *(f"--set={s}" for s in SMALL), "--set", "optimizer.lr=1e3",
                   "--set", "training.iterations=30", "--set", "training.log_every=1"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "non-finite loss at iteration" in err
    assert not list((tmp_path / "r").glob("snapshot-*.pt"))
    for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines():  # strict JSON: no bare NaN
        assert all(v == v for v in json.loads(line, parse_constant=lambda c: pytest.fail(c)).values())


@pytest.mark.parametrize("value", ["nan", ".nan", ".inf", "-.inf", "1e400", "inf"])
def test_nonfinite_config_values_are_rejected(value):
    with pytest.raises(ConfigError, match="optimizer.lr.*finite"):
        load_run_config("digits-tune", [f"optimizer.lr={value}"])
    with pytest.raises(ConfigError, match=r"sampling.t_mid\[0\]"):
        load_run_config("digits-tune", [f"sampling.t_mid=[{value}]"])


# --- Damaged and non-finite checkpoints -----------------------------------------------------------------------


def _ckpt(path, value=1.0):
    save_checkpoint(path, {"kind": "diffusion", "network": {"preset": "tiny-s", "overrides": {}},
                           "progress": {"iteration": int(value)}, "ema": {"w": torch.full([64, 64], value)},
                           "net": {"w": torch.full([64, 64], value)}})


def test_loading_refuses_nonfinite_bitflipped_and_truncated_files(tmp_path):
    path = tmp_path / "c.pt"
    _ckpt(path)
    assert load_checkpoint(path)["progress"]["iteration"] == 1
    raw = path.read_bytes()
    data = torch.load(path, weights_only=True)
    data.pop("digest")
    data["ema"]["w"][3, 4] = float("inf")
    save_checkpoint(path, data)
    with pytest.raises(DamagedCheckpointError, match=r"c.pt: tensor ema\['w'\] holds NaN or infinite"):
        load_checkpoint(path)
    flipped = bytearray(raw)
    flipped[raw.index(torch.full([64, 64], 1.0).numpy().tobytes()) + 100] ^= 0x01
    path.write_bytes(bytes(flipped))
    with pytest.raises(DamagedCheckpointError, match="c.pt is damaged"):
        load_checkpoint(path)
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DamagedCheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_a_damaged_checkpoint_falls_back_to_the_previous_generation(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    _ckpt(path, 1.0)
    _ckpt(path, 2.0)  # rotates 1 into checkpoint-previous.pt only when asked:
    assert not previous_path(path).exists()
    save_checkpoint(path, {**load_checkpoint(path), "progress": {"iteration": 3}}, keep_previous=True)
    assert load_checkpoint(previous_path(path))["progress"]["iteration"] == 2
    assert load_resume_checkpoint(path, "diffusion")["progress"]["iteration"] == 3
    path.write_bytes(path.read_bytes()[:1000])
    assert load_resume_checkpoint(path, "diffusion")["progress"]["iteration"] == 2
    assert "resuming from" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="holds a diffusion model"):  # a wrong kind never falls back
        load_resume_checkpoint(previous_path(path), "consistency")
    previous_path(path).write_bytes(b"junk")
    with pytest.raises(DamagedCheckpointError, match="previous generation is unusable too"):
        load_resume_checkpoint(path, "diffusion")


def test_training_resumes_from_the_previous_generation_bit_identically(tmp_path, pretrained_tiny):
    straight, damaged = tmp_path / "straight", tmp_path / "damaged"
    train(_cfg("training.iterations=15"), "ect", straight, init=pretrained_tiny, progress=False)
    train(_cfg("training.iterations=10"), "ect", damaged, init=pretrained_tiny, progress=False)
    assert load_checkpoint(previous_path(damaged / "checkpoint.pt"))["progress"]["iteration"] == 5
    ckpt = damaged / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-5000])
    train(_cfg("training.iterations=15"), "ect", damaged, init=pretrained_tiny, progress=False)
    a, b = _weights(straight / "checkpoint.pt"), _weights(damaged / "checkpoint.pt")
    assert a[1] == b[1] == 15 and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def test_a_rerun_rewrites_a_damaged_snapshot_at_its_checkpoint(tmp_path, pretrained_tiny, capsys):
    run = tmp_path / "run"
    train(_cfg("training.iterations=5"), "ect", run, init=pretrained_tiny, progress=False)
    snapshot = run / "snapshot-0000005.pt"
    good = load_checkpoint(snapshot)["ema"]
    snapshot.write_bytes(snapshot.read_bytes()[:-100])
    with pytest.raises(DamagedCheckpointError, match="snapshot-0000005.pt"):
        load_checkpoint(snapshot)
    train(_cfg("training.iterations=5"), "ect", run, init=pretrained_tiny, progress=False)
    assert "rewriting it from the checkpoint at iteration 5" in capsys.readouterr().err
    assert all(torch.equal(v, good[k]) for k, v in load_checkpoint(snapshot)["ema"].items())


def test_nonfinite_init_and_snapshot_are_refused_by_tune_and_sample(tmp_path, pretrained_tiny, capsys):
    bad = tmp_path / "bad.pt"
    data = load_checkpoint(pretrained_tiny)
    next(iter(data["ema"].values())).view(-1)[0] = float("nan")
    save_checkpoint(bad, data)
    assert main(["tune", "--config", "digits-tune", "--init", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert main(["sample", "--checkpoint", str(bad), "--sampler", "heun", "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count(f"{bad}: tensor ema[") == 2 and "Traceback" not in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "s.npz").exists()


# --- Preemption -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_writes_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path, pretrained_tiny, monkeypatch,
                                                                       sig):
    straight, stopped, before = tmp_path / "straight", tmp_path / "stopped", signal.getsignal(sig)
    train(_cfg("training.iterations=10"), "ect", straight, init=pretrained_tiny, progress=False)
    _on_call(monkeypatch, 7, lambda loss: os.kill(os.getpid(), sig) or loss)  # arrives during iteration 7
    with pytest.raises(PreemptedError, match=f"stopped by {sig.name} at iteration 7") as info:
        train(_cfg("training.iterations=10"), "ect", stopped, init=pretrained_tiny, progress=False)
    assert info.value.exit_status == PREEMPTED_EXIT
    assert _weights(stopped / "checkpoint.pt")[1] == 7  # not a multiple of checkpoint_every: written on the signal
    assert signal.getsignal(sig) == before  # the handlers live only as long as the run
    monkeypatch.undo()
    train(_cfg("training.iterations=10"), "ect", stopped, init=pretrained_tiny, progress=False)
    a, b = _weights(straight / "checkpoint.pt"), _weights(stopped / "checkpoint.pt")
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])


# --- One writer per run directory -----------------------------------------------------------------------------


def test_a_second_writer_fails_at_once_naming_the_holder(tmp_path, pretrained_tiny, capsys):
    run = tmp_path / "run"
    with RunLock(run):
        status = main(["tune", "--config", "digits-tune", "--init", str(pretrained_tiny), "--out", str(run),
                       *(f"--set={s}" for s in SMALL), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and f"pid {os.getpid()} on host" in err
    assert not (run / "config.yaml").exists()
    with RunLock(run), pytest.raises(Exception, match="being written by"), RunLock(run):
        pass
    with RunLock(run):  # released on exit, so a crashed holder never blocks the next run
        pass


# --- Malformed input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv,message", [
    (["--set", "ect.q=[1,"], "cannot parse '[1,'"),
    (["--set", "training.iterations.x=1"], "training.iterations: expected int"),
    (["--set", "training.iterations=5", "--set", "training.iterations.x=1"], "is a value, not a section"),
    (["--set", "optimizer.lr=nan"], "optimizer.lr: nan is not a finite number"),
    (["--set", f"training.seed={2**70}"], "training.seed"),
    (["--set", "training.device=cuda:x"], "training.device"),
    (["--set", ".x=1"], "section.name"),
])
def test_malformed_train_calls_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert main(["pretrain", "--config", "digits-pretrain", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing left that would refuse the corrected rerun


def test_out_under_a_file_and_missing_cuda_are_one_line(tmp_path, pretrained_tiny, capsys):
    (tmp_path / "file").write_text("")
    assert main(["pretrain", "--config", "digits-pretrain", "--out", str(tmp_path / "file" / "run"),
                 "--set", "training.iterations=1"]) == 2
    assert main(["sample", "--checkpoint", str(pretrained_tiny), "--sampler", "heun", "--seed", str(2**70),
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert main(["sample", "--checkpoint", str(pretrained_tiny), "--sampler", "heun",
                 "--out", str(tmp_path / "file" / "x.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "cannot use" in err[0] and "0…2^63" in err[1] and "file" in err[2]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda", "training.device")
        assert main(["pretrain", "--config", "digits-pretrain", "--out", str(tmp_path / "r"),
                     "--set", "training.device=cuda"]) == 2
        assert not (tmp_path / "r").exists()


def test_analysis_commands_name_a_missing_or_malformed_file(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert main(["fit", "--metrics", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "f.csv")]) == 1
    assert main(["fit", "--metrics", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "f.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "missing.csv: No such file" in err[0] and "bad.csv is not a metrics table" in err[1]


# --- Results readable by the group ----------------------------------------------------------------------------


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "x", lambda f: f.write(b"1"))
        _ckpt(tmp_path / "c.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "c.pt").stat().st_mode) == mode


def test_a_full_disk_is_an_oserror_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ect.files.os, "fdopen", lambda fd, mode: os.close(fd) or Full())
    with pytest.raises(OSError, match="No space left") as info:  # torch.save alone says "unexpected pos"
        _ckpt(tmp_path / "c.pt")
    assert info.value.filename == str(tmp_path / "c.pt") and not list(tmp_path.iterdir())


# --- Feature-extractor weights --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """Inception weights of the right shapes but our own values (we are offline: never the published file)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
        torch.manual_seed(0)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["64"])
    path = tmp_path_factory.mktemp("inception") / "weights.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_weights_of_the_right_shapes_but_another_hash_are_refused(inception_file):
    with pytest.raises(MetricError, match="does not start with the published 6726825d"):
        create_extractor("inception-v3-compat", "64", weights_path=inception_file)


def test_verified_inception_weights_load_without_unpickling_code(inception_file, monkeypatch):
    monkeypatch.setattr(ect.metrics, "INCEPTION_SHA256_PREFIX",
                        hashlib.sha256(inception_file.read_bytes()).hexdigest()[:8])
    real_load, calls = torch.load, []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    extractor = create_extractor("inception-v3-compat", "64", weights_path=inception_file)
    assert calls and all(c.get("weights_only") is True and c.get("map_location") == "cpu" for c in calls)
    expected = real_load(inception_file, weights_only=True)
    assert all(torch.equal(extractor.state_dict()[k], v) for k, v in expected.items())


def test_the_feature_network_goes_to_the_requested_device(inception_file, monkeypatch):
    monkeypatch.setattr(ect.metrics, "INCEPTION_SHA256_PREFIX",
                        hashlib.sha256(inception_file.read_bytes()).hexdigest()[:8])
    moved = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *args, **kwargs: moved.append(args) or self)
    create_extractor("inception-v3-compat", "64", device="cuda:1", weights_path=inception_file)
    assert moved[-1] == ("cuda:1",)  # not .cuda(), which would pick the current (first) GPU
