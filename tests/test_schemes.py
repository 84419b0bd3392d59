"""The training schemes (ECT from scratch, iCT, CD) against their published forms (docs/training-schemes.md), their
init rules, and tiny runs that resume bit-identically and count their compute."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from ect.checkpoint import load_checkpoint, network_from_checkpoint
from ect.cli import main
from ect.config import ConfigError, load_run_config
from ect.losses import (
    ect_loss,
    grid_index,
    grid_pair,
    ict_index_probs,
    ict_steps,
    karras_sigmas,
    pseudo_huber_c,
)
from ect.methods import METHODS
from ect.networks import build_network
from ect.networks.dropout import replay_masks, shared_dropout
from ect.objectives import PAIRS, Batch, Objective, ict_grid
from ect.sampling import heun_sample, pf_ode_step
from ect.training import METHOD_STREAMS, train

SMALL = ["network.preset=tiny-s", "training.batch_size=16", "training.log_every=2", "training.checkpoint_every=2",
         "training.budgets=[]", "sampling.grid_size=0"]
PRESETS = {"ect": "digits-tune", "ict": "digits-ict", "cd": "digits-cd"}


def _cfg(method: str, *extra: str):
    return load_run_config(PRESETS[method], [*SMALL, *extra])


# --- The formulas --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("K,expected", [
    (800, {0: 11, 99: 11, 100: 21, 200: 41, 300: 81, 400: 161, 500: 321, 600: 641, 700: 1281, 799: 1281}),
    (400_000, {0: 11, 49_999: 11, 50_000: 21, 349_999: 641, 350_000: 1281, 399_999: 1281}),  # iCT's CIFAR-10 run
    (1000, {124: 11, 125: 21, 874: 641, 875: 1281, 999: 1281}),  # K' = ⌊1000/8⌋ = 125
])
def test_ict_curriculum(K, expected):
    # N(k) = min(s0·2^⌊k/K'⌋, s1) + 1, K' = ⌊K/(log2⌊s1/s0⌋ + 1)⌋ with s0 = 10, s1 = 1280 (log2 128 + 1 = 8).
    assert {k: ict_steps(k, K) for k in expected} == expected
    assert [ict_steps(k, 800) for k in range(0, 800, 100)] == [11, 21, 41, 81, 161, 321, 641, 1281]
    # The log's stage of an iCT run counts the doublings so far.
    obj = Objective(_cfg("ict", "training.iterations=800"), "ict", 64)
    assert [obj.stage(k) for k in (0, 99, 100, 650, 799)] == [0, 0, 1, 6, 7]


def test_ict_curriculum_other_ratios_and_short_runs():
    # s1/s0 = 15 (not a power of 2): K' = ⌊100/(log2 15 + 1)⌋ = 20, capped at s1.
    assert [ict_steps(k, 100, 10, 150) for k in (0, 19, 20, 40, 60, 80, 99)] == [11, 11, 21, 41, 81, 151, 151]
    # Fewer iterations than doublings: K' = 1, one doubling per iteration.
    assert [ict_steps(k, 4) for k in range(4)] == [11, 21, 41, 81]


def test_karras_boundaries():
    sigmas = karras_sigmas(18)
    assert sigmas.dtype == torch.float64 and len(sigmas) == 18
    assert sigmas[0].item() == pytest.approx(0.002, rel=1e-12) and sigmas[-1].item() == pytest.approx(80.0, rel=1e-12)
    assert bool((sigmas[1:] > sigmas[:-1]).all())
    lo, hi = 0.002 ** (1 / 7), 80 ** (1 / 7)
    for i in (1, 5, 17):  # σ_i = (σ_min^{1/ρ} + (i−1)/(N−1)·(σ_max^{1/ρ} − σ_min^{1/ρ}))^ρ, 1-based
        assert sigmas[i - 1].item() == pytest.approx((lo + (i - 1) / 17 * (hi - lo)) ** 7, rel=1e-12)
    # The same grid as EDM's Heun sampler (which runs it from σ_max down).
    x = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    seen = []
    heun_sample(lambda x, t, labels, boundary: (seen.append(float(t)), torch.zeros_like(x))[1], x, num_steps=18)
    assert sorted(set(seen))[-18:] == pytest.approx(sigmas.tolist(), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        karras_sigmas(1)


def test_ict_index_distribution_is_the_erf_form():
    sigmas = karras_sigmas(ict_steps(0, 800))
    p = ict_index_probs(sigmas, -1.1, 2.0)
    assert len(p) == len(sigmas) - 1 and p.sum().item() == pytest.approx(1.0, abs=1e-12) and bool((p > 0).all())
    erf = [math.erf((math.log(s) + 1.1) / (math.sqrt(2) * 2.0)) for s in sigmas.tolist()]
    unnormalised = [b - a for a, b in itertools.pairwise(erf)]
    assert p.tolist() == pytest.approx([u / sum(unnormalised) for u in unnormalised], rel=1e-10)
    # The draws follow p: 400k inverse-CDF draws from standard-normal z, each frequency within 5 standard errors.
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(grid_index(z, p), minlength=len(p)).double() / len(z)
    assert torch.all((freq - p).abs() <= 5 * (p * (1 - p) / len(z)).sqrt() + 1e-9)


def test_pairs_are_adjacent_grid_values():
    z = torch.randn(4096, generator=torch.Generator().manual_seed(1))
    for method, it, grid in (("ict", 0, None), ("ict", 700, None), ("cd", 0, karras_sigmas(18))):
        cfg = _cfg(method, "training.iterations=800")
        t, r = PAIRS[METHODS[method].pairs](cfg, it, z)
        sigmas = (ict_grid(cfg, it) if grid is None else grid).float()
        i_t, i_r = (torch.searchsorted(sigmas, v) for v in (t, r))
        assert torch.equal(sigmas[i_t], t) and torch.equal(sigmas[i_r], r) and torch.equal(i_t, i_r + 1)
        if method == "ict":  # the intervals follow iCT's p(i)
            p = ict_index_probs(ict_grid(cfg, it), cfg.ict.P_mean, cfg.ict.P_std)
            freq = torch.bincount(i_r, minlength=len(p)).double() / len(z)
            assert torch.all((freq - p).abs() <= 5 * (p * (1 - p) / len(z)).sqrt() + 1e-3)
    # CD's index is uniform over the N − 1 = 17 intervals.
    freq = torch.bincount(torch.searchsorted(karras_sigmas(18).float(), r), minlength=17) / len(z)
    assert torch.all((freq - 1 / 17).abs() < 5 * math.sqrt(1 / 17 * 16 / 17 / len(z)))
    t, r = grid_pair(karras_sigmas(5), torch.tensor([0, 3]))
    assert t.tolist() == pytest.approx(karras_sigmas(5)[[1, 4]].tolist()) and r.dtype == torch.float32


def test_pseudo_huber_constant():
    assert pseudo_huber_c(3 * 32 * 32) == pytest.approx(0.00054 * math.sqrt(3072))  # CIFAR-10: ≈ 0.0299
    assert Objective(_cfg("ict"), "ict", 64).c == pytest.approx(0.00054 * 8)  # digits: 1 × 8 × 8
    assert Objective(_cfg("cd", "cd.c=0.1"), "cd", 64).c == 0.1
    assert Objective(_cfg("ect"), "ect", 64).c == 0.0  # ECT keeps its own setting


class _Net(torch.nn.Module):
    """Identity 'network' with dropout and the target-pass interface of the real ones."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.scale, self.p = torch.nn.Parameter(torch.ones(())), p

    def forward(self, x, sigma, labels=None):
        return shared_dropout(self, x * self.scale, self.p)

    def target_pass(self):
        return replay_masks()


def test_ict_loss_is_weighted_pseudo_huber_of_adjacent_points():
    cfg = _cfg("ict", "training.iterations=800")
    obj = Objective(cfg, "ict", 4)
    x0, eps = torch.randn(6, 1, 2, 2), torch.randn(6, 1, 2, 2)
    z = torch.randn(6)
    terms = obj(_Net().eval(), 0, Batch(x0, None, z, eps))
    t, r = PAIRS["ict_grid"](cfg, 0, z)
    # Identity network: f(x_t) − f(x_r) = (t − r)·ε; λ = 1/(σ_{i+1} − σ_i); c = 0.00054·√4.
    c = 0.00054 * 2
    d2 = ((t - r).reshape(-1, 1, 1, 1) ** 2 * eps**2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(terms.loss, (torch.sqrt(d2 + c * c) - c) / (t - r))
    assert terms.target_pass


def test_the_method_table_gives_ect_its_own_loss_bit_for_bit():
    cfg = _cfg("ect", "ect.c=0.05")
    obj = Objective(cfg, "ect", 16)
    x0, eps, z = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4), torch.randn(8)
    net = _Net(p=0.3).train()
    torch.manual_seed(3)
    terms = obj(net, 40, Batch(x0, None, z, eps))
    t, r = PAIRS["mapping"](cfg, 40, z)
    torch.manual_seed(3)
    assert torch.equal(terms.loss, ect_loss(net, x0, None, t, r, eps, c=0.05, weighting="inverse_dt"))


def test_cd_target_is_one_step_of_the_heun_sampler(pretrained_tiny):
    """x_r = one Heun step of the teacher's PF-ODE from x_t at σ_{i+1} to σ_i: the same as EDM's Heun sampler run
    over the two-point schedule (its last step to 0 is the denoiser at r, applied to our x_r)."""
    teacher = network_from_checkpoint(load_checkpoint(pretrained_tiny))
    cfg = _cfg("cd")
    obj = Objective(cfg, "cd", 64, teacher=teacher)
    assert obj.teacher_evals == 2
    sigmas = karras_sigmas(18)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3, 1, 8, 8, generator=gen, dtype=torch.float64) * 2 - 1
    eps = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    for i in (0, 8, 16):
        t, r = sigmas[i + 1], sigmas[i]
        x_t = x0 + t * eps
        x_r = obj.target_point(Batch(x0, None, torch.zeros(3), eps), x_t, t.reshape(1, 1, 1, 1), r.reshape(1, 1, 1, 1))
        sampled = heun_sample(teacher, x_t / t, num_steps=2, sigma_min=float(r), sigma_max=float(t))
        torch.testing.assert_close(teacher(x_r, r, boundary=False).double(), sampled, rtol=1e-5, atol=1e-6)
    # Euler: x_r = x_t + (r − t)·(x_t − D(x_t, t))/t, one teacher evaluation.
    euler = Objective(_cfg("cd", "cd.solver=euler"), "cd", 64, teacher=teacher)
    assert euler.teacher_evals == 1
    x_r = euler.target_point(Batch(x0, None, torch.zeros(3), eps), x_t, t, r)
    torch.testing.assert_close(x_r, x_t + (r - t) * (x_t - teacher(x_t, t, boundary=False)) / t)
    torch.testing.assert_close(pf_ode_step(lambda x, s: teacher(x, s, boundary=False), x_t, t, r, False), x_r)


def test_cd_counts_its_teacher_evaluations(gaussian_denoiser):
    teacher = gaussian_denoiser(resolution=2)
    obj = Objective(_cfg("cd"), "cd", 4, teacher=teacher)
    obj(_Net(), 0, Batch(torch.zeros(5, 1, 2, 2), None, torch.randn(5), torch.randn(5, 1, 2, 2)))
    assert teacher.calls == obj.teacher_evals == 2  # batched: 2 evaluations of every image


# --- Init rules ----------------------------------------------------------------------------------------------------


def test_method_table():
    assert {m: METHODS[m].kind for m in METHODS} == {"diffusion": "diffusion", "ect": "consistency",
                                                    "ict": "consistency", "cd": "consistency"}
    assert len(set(METHOD_STREAMS.values())) == len(METHODS) and METHOD_STREAMS["ect"] == 1  # ECT's draws unchanged


def test_init_rules(tmp_path, pretrained_tiny):
    with pytest.raises(ConfigError, match="--method ict trains from random initialisation and takes no --init"):
        train(_cfg("ict"), "ict", tmp_path / "a", init=pretrained_tiny)
    with pytest.raises(ConfigError, match="--method cd needs --init: the teacher, a diffusion checkpoint"):
        train(_cfg("cd"), "cd", tmp_path / "b")
    with pytest.raises(ConfigError, match="takes no --init"):
        train(_cfg("ect"), "ect", tmp_path / "c", init=pretrained_tiny, from_scratch=True)
    with pytest.raises(ConfigError, match="--method diffusion trains from random initialisation"):
        train(load_run_config("digits-pretrain", SMALL), "diffusion", tmp_path / "d", init=pretrained_tiny)
    # A consistency model is no teacher, and ECT tunes diffusion models only.
    train(_cfg("ect", "training.iterations=2"), "ect", tmp_path / "e", init=pretrained_tiny, progress=False)
    consistency = tmp_path / "e" / "snapshot-0000002.pt"
    for method in ("cd", "ect"):
        with pytest.raises(ConfigError, match=f"holds a consistency model; --method {method} needs a diffusion"):
            train(_cfg(method), method, tmp_path / "f", init=consistency)
    assert not (tmp_path / "a").exists() and not (tmp_path / "f").exists()  # refused before writing anything


def test_cli_train_errors_are_one_line(tmp_path, capsys, pretrained_tiny):
    argv = ["train", "--method", "ict", "--config", "digits-ict", "--init", str(pretrained_tiny), "--out",
            str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ect train: error: --method ict") and "\n" not in err


def test_ect_from_scratch_starts_from_the_seeded_random_weights(tmp_path):
    # lr 0: the weights after one iteration are the initial ones.
    for seed in (0, 7):
        out = tmp_path / f"seed{seed}"
        assert main(["train", "--method", "ect", "--config", "digits-tune", "--out", str(out), "--no-progress",
                     *(x for s in [*SMALL, "training.iterations=1", "optimizer.lr=0", f"training.seed={seed}"]
                       for x in ("--set", s))]) == 0
        ckpt = load_checkpoint(out / "checkpoint.pt")
        torch.manual_seed(seed)
        fresh = build_network("tiny-s", **ckpt["network"]["overrides"]).state_dict()
        assert all(torch.equal(fresh[k], ckpt["net"][k]) for k in fresh)
        assert ckpt["progress"]["init_flops"] == 0 and ckpt["progress"]["total_flops"] == ckpt["progress"]["flops"]
    a, b = (load_checkpoint(tmp_path / f"seed{s}" / "checkpoint.pt")["net"] for s in (0, 7))
    assert not all(torch.equal(a[k], b[k]) for k in a)


# --- Tiny runs: resume and compute ---------------------------------------------------------------------------------


def _run(method: str, out, iterations: int, init, *extra: str) -> dict:
    return train(_cfg(method, f"training.iterations={iterations}", *extra), method, out, init=init, progress=False,
                 from_scratch=init is None and method == "ect")


@pytest.mark.parametrize("method,extra", [
    ("ect", ()),  # from scratch
    ("ict", ("ict.total_iterations=6",)),
    ("cd", ()),
    ("cd", ("cd.target_ema=0.9", "network.dropout=0.2", "cd.solver=euler")),
])
def test_tiny_runs_resume_bit_identically_and_count_compute(tmp_path, pretrained_tiny, method, extra):
    init = pretrained_tiny if METHODS[method].teacher else None
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    summary = _run(method, straight, 6, init, *extra)
    _run(method, resumed, 3, init, *extra)  # stopped at 3 (checkpoints at 2 and 3), continued to 6
    _run(method, resumed, 6, init, *extra)
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(resumed / "checkpoint.pt")
    for key in ("net", "ema", *(("target",) if "cd.target_ema=0.9" in extra else ())):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["progress"] == b["progress"] and a["method"] == method and a["kind"] == "consistency"
    # Compute: every iteration is a forward, a backward (≈ 2 forwards) and the target pass, plus for CD the teacher's
    # evaluations of the ODE step (Heun 2, Euler 1); the totals add what the run started from.
    p, images = a["progress"], 6 * 16
    teacher_evals = 0 if init is None else (1 if "cd.solver=euler" in extra else 2)
    fwd = p["flops_per_image_forward"]
    if method == "ect":  # from scratch at stage 0 some iterations draw only r = 0 (no target pass)
        assert 3 * fwd * images <= p["flops"] <= 4 * fwd * images
    else:  # the teacher is the student's architecture
        assert p["flops"] == pytest.approx((4 + teacher_evals) * fwd * images, rel=1e-12)
    assert p["teacher_flops"] == pytest.approx(teacher_evals * fwd * images, rel=1e-12)
    start = load_checkpoint(pretrained_tiny)["progress"] if init is not None else {"flops": 0.0, "images": 0}
    assert p["images"] == images and p["init_images"] == start["images"] and p["total_images"] == images + start[
        "images"]
    assert p["init_flops"] == start["flops"] and p["total_flops"] == pytest.approx(p["flops"] + start["flops"])
    assert {k: summary[k] for k in ("total_flops", "total_images", "init_flops", "teacher_flops")} == {
        k: p[k] for k in ("total_flops", "total_images", "init_flops", "teacher_flops")}
    log = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in log) and log[-1]["iteration"] == 6


def test_resumes_refused_when_they_would_change_the_run(tmp_path, pretrained_tiny):
    # iCT with the curriculum following training.iterations: continuing at another length would change N(k).
    _run("ict", tmp_path / "ict", 2, None)
    with pytest.raises(ConfigError, match="ict.total_iterations: 2 in the existing run, 4 now"):
        _run("ict", tmp_path / "ict", 4, None)
    # A tuned run is not continued from scratch; a CD run not with another teacher.
    _run("ect", tmp_path / "tuned", 2, pretrained_tiny)
    with pytest.raises(ConfigError, match="init: .* in the existing run, None now"):
        _run("ect", tmp_path / "tuned", 4, None)
    _run("cd", tmp_path / "cd", 2, pretrained_tiny)
    other = tmp_path / "other.pt"
    teacher = load_checkpoint(pretrained_tiny)
    teacher["ema"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in teacher["ema"].items()}
    from ect.checkpoint import save_checkpoint

    save_checkpoint(other, teacher)
    with pytest.raises(ConfigError, match="is not the teacher"):
        _run("cd", tmp_path / "cd", 4, other)


def test_metrics_rows_carry_method_and_total_compute(tmp_path):
    from ect.analysis.collect import COLUMNS, Evaluation, collect

    def record(name: str, **extra) -> Evaluation:
        data = {"metric": "fd_digits", "value": 3.0, "real_data": 1.0, "num_samples": 100, "nfe": 1,
                "sampler": {"sampler": "1step"}, "checkpoint_kind": "consistency", "num_parameters": 10,
                "iteration": 5, "training_images": 80, "training_flops": 2e9, **extra}
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        return Evaluation("m", "base", tmp_path / f"{name}.json")

    table = collect("x", [record("cd", method="cd", total_images=180, total_flops=5e9), record("old")])
    assert list(table.columns) == COLUMNS and COLUMNS[-2:] == ["total_images", "total_flops"]
    rows = table.set_index("method")
    assert rows.loc["cd", "total_flops"] == 5e9 and rows.loc["cd", "total_images"] == 180
    # A record written before the method and total fields: the kind's default method, its own compute as total.
    assert rows.loc["ect", "total_flops"] == 2e9 and rows.loc["ect", "total_images"] == 80
