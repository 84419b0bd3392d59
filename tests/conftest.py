"""Shared fixtures: small deterministic networks and a session-wide digits pretrain/tune run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("ECT_CACHE", os.path.join(os.path.dirname(__file__), "..", ".cache-tests"))
torch.set_num_threads(min(2, torch.get_num_threads()))


# With pytest-xdist (`make test` runs two or more workers), tests that share an expensive fixture go to one worker, so
# that it is built once: the smoke study (workflow tests and the SLURM smoke run) and the preemption study's reference.
XDIST_GROUPS = {"smoke_study": "smoke", "uninterrupted": "preemption"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, group in XDIST_GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))


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


@pytest.fixture(scope="session")
def smoke_study(tmp_path_factory) -> Path:
    """The smoke study run locally (snakemake --cores 2) in a temporary directory: the workflow tests check it, the
    SLURM tests compare their runs with it."""
    root, workdir = Path(__file__).resolve().parents[1], tmp_path_factory.mktemp("smoke")
    bin_dir = Path(sys.executable).parent
    run = subprocess.run([str(bin_dir / "snakemake"), "--snakefile", str(root / "Snakefile"), "--directory",
                          str(workdir), "--cores", "2", "--configfile", str(root / "workflow/configs/smoke.yaml")],
                         capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    (workdir / "run.stdout").write_text(run.stdout)  # what the run printed (its summary), for the tests
    return workdir
