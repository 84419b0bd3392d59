"""Shared fixtures: small deterministic networks and a session-wide digits pretrain/tune run."""

from __future__ import annotations

import fcntl
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("ECT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache-tests"))
torch.set_num_threads(min(2, torch.get_num_threads()))


class GaussianDenoiser(torch.nn.Module):
    """Exact denoiser/consistency function for data ~ N(0, s²·I), with the network interface.

    Denoiser (diffusion): D(x, σ) = s²/(s² + σ²)·x. Consistency function (the PF-ODE maps x_t to
    x_0 = s/√(s² + t²)·x_t): f(x, t). Lets sampler tests compare with closed forms.
    """

    def __init__(self, s: float = 0.5, resolution: int = 4, channels: int = 1, consistency: bool = False,
                 label_dim: int = 0) -> None:
        super().__init__()
        self.s, self.consistency = s, consistency
        self.img_resolution, self.img_channels, self.label_dim = resolution, channels, label_dim
        self.calls = 0

    def forward(self, x, sigma, class_labels=None, *, boundary=None):
        self.calls += 1
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        s2 = self.s**2
        scale = (s2 / (s2 + sigma**2)).sqrt() if self.consistency else s2 / (s2 + sigma**2)
        return scale * x


@pytest.fixture
def gaussian_denoiser():
    return GaussianDenoiser


@pytest.fixture(scope="session")
def pretrained_tiny(tmp_path_factory):
    """A few iterations of digits pretraining of tiny-s: enough to have a real diffusion checkpoint."""
    from ect.config import load_run_config
    from ect.training import train

    out = tmp_path_factory.mktemp("pretrain")
    cfg = load_run_config("digits-pretrain", ["network.preset=tiny-s", "training.iterations=20",
                                              "training.batch_size=32", "training.log_every=10",
                                              "sampling.grid_size=16"])
    train(cfg, "diffusion", out, progress=False)
    return out / "snapshot-0000020.pt"


# The smoke study (snakemake --cores 2 on workflow/configs/smoke.yaml) is the suite's longest fixture: the workflow
# tests check it, the SLURM tests compare their runs with it. It starts in the background when the first test of a run
# starts (if any collected test needs it) and runs beside the other tests; it is made once per test run, in a
# directory the pytest-xdist workers of the run share (`make test` runs one per core). A test that needs it waits.
SMOKE_TIMEOUT = 1800  # seconds; the study ends by itself even if the test run is interrupted


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test run's base temporary directory, the same for all its xdist workers."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order in which tests are handed out: first those that mostly wait (the SLURM preemption runs), last those
    that need the smoke study (by then it has ended), the rest in between, each part in collection order."""

    def part(item: pytest.Item) -> int:
        fixtures = getattr(item, "fixturenames", ())
        return 0 if "uninterrupted" in fixtures else 2 if "smoke_study" in fixtures else 1

    items.sort(key=part)


@pytest.fixture(scope="session", autouse=True)
def _smoke_study_in_background(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    if not any("smoke_study" in getattr(item, "fixturenames", ()) for item in request.session.items):
        return
    shared = _shared_dir(tmp_path_factory)
    with open(shared / "smoke.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker starts it, the others find it started
        workdir = shared / "smoke"
        if workdir.exists():
            return
        workdir.mkdir()
        root, bin_dir = Path(__file__).resolve().parents[1], Path(sys.executable).parent
        command = shlex.join(["timeout", str(SMOKE_TIMEOUT), str(bin_dir / "snakemake"), "--snakefile",
                              str(root / "Snakefile"), "--directory", str(workdir), "--cores", "2", "--configfile",
                              str(root / "workflow/configs/smoke.yaml")])
        # run.stdout: what the run printed (its summary), for the tests; run.rc appears when it has ended.
        subprocess.Popen(["sh", "-c", f"{command} > run.stdout 2> run.stderr; echo $? > run.rc.tmp; "
                                      "mv run.rc.tmp run.rc"], cwd=workdir, start_new_session=True,
                         env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})


@pytest.fixture(scope="session")
def smoke_study(_smoke_study_in_background: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke study's directory, once its run has ended (it must have succeeded)."""
    workdir = _shared_dir(tmp_path_factory) / "smoke"
    deadline = time.monotonic() + SMOKE_TIMEOUT + 60
    while not (workdir / "run.rc").exists():
        assert time.monotonic() < deadline, f"the smoke study in {workdir} did not end"
        time.sleep(2)
    rc = (workdir / "run.rc").read_text().strip()
    assert rc == "0", f"the smoke study failed (exit {rc}): " + (workdir / "run.stderr").read_text()[-5000:]
    return workdir
