"""The training-schemes comparison's bookkeeping (ect.analysis.schemes, ect.schemes) on synthetic metric rows and
budgets: compute in units of P, mean/std over training seeds, differences called only beyond the spread, the figure
and the CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ect.analysis.collect import COLUMNS
from ect.analysis.schemes import Arm, schemes_figure, schemes_table, seed_rows
from ect.schemes import (
    Budget,
    arm_iterations,
    budget_iterations,
    check_arm,
    parse_budget,
    passes_per_image,
    pretraining_flops,
)
from ect.study import StudyError

F = 3_214_848.0  # tiny-s forward FLOPs per 8×8 image (ect.flops.forward_flops_per_image)
P = pretraining_flops(F, 128, 1000)  # the embedded default's tiny-s pretraining
ARMS = {"diffusion": Arm("diffusion", "scratch", "tiny-s"), "ect": Arm("ect", "pretrained", "tiny-s"),
        "ict": Arm("ict", "scratch", "tiny-s"), "cd": Arm("cd", "pretrained", "tiny-s"),
        "ect-scratch": Arm("ect", "scratch", "tiny-s")}


# --- budgets in units of P -> iterations ------------------------------------------------------------------------


def test_pretraining_compute_is_three_passes_per_image():
    assert P == 3 * F * 128 * 1000


def test_budgets_in_p_give_the_embedded_defaults_iterations():
    # ECT from the pretrained model to 1.5P at batch 64: 0.5P / (4 passes × F × 64) = 750, the tuning run's budget.
    assert budget_iterations(1.5, P, P, passes_per_image("ect"), F, 64) == 750
    # iCT from scratch to 1.5P at batch 128: 1.5 × 3 × 1000 / 4 = 1125.
    assert budget_iterations(1.5, P, 0.0, passes_per_image("ict"), F, 128) == 1125
    # CD with Heun: 4 + 2 teacher evaluations per image; to 1.5P at batch 64: 0.5 × 384,000 / 384 = 500.
    assert passes_per_image("cd") == 6 and passes_per_image("cd", "euler") == 5
    assert budget_iterations(1.5, P, P, passes_per_image("cd"), F, 64) == 500
    # The diffusion model to 2P from scratch is twice its pretraining.
    assert budget_iterations(2.0, P, 0.0, passes_per_image("diffusion"), F, 128) == 2000


def test_budget_rounds_to_the_nearest_iteration():
    unit = 100.0
    # 1 pass × 1 FLOP × batch 8 = 8 FLOPs per iteration: 1.0P = 12.5 iterations rounds up (halves up), 1.03P =
    # 12.875 to 13, 0.99P = 12.375 to 12; the realised total is within half an iteration of the target.
    assert budget_iterations(1.0, unit, 0.0, 1, 1.0, 8) == 13
    assert budget_iterations(1.03, unit, 0.0, 1, 1.0, 8) == 13
    assert budget_iterations(0.99, unit, 0.0, 1, 1.0, 8) == 12
    for p in (0.37, 0.99, 1.0, 2.51):
        assert abs(budget_iterations(p, unit, 0.0, 1, 1.0, 8) * 8 - p * unit) <= 4


def test_budget_at_or_below_the_initialisation_is_refused():
    with pytest.raises(StudyError, match="config schemes.arms.ect.budgets.0.: 1P leaves no iterations after the "
                                         "initialisation's 1P"):
        budget_iterations(1.0, P, P, 4, F, 64, "schemes.arms.ect.budgets[0]")


@pytest.mark.parametrize(("value", "expected"), [
    ("1.5P", Budget("1.5P", p=1.5)), ("4P", Budget("4P", p=4.0)), (".5P", Budget("0.5P", p=0.5)),
    (750, Budget("750", iterations=750)),
])
def test_parse_budget(value, expected):
    assert parse_budget(value, "b") == expected


@pytest.mark.parametrize("value", ["1.5 P", "P", "-1P", "0P", "1.5", True, 0, "1.5p"])
def test_parse_budget_refuses(value):
    with pytest.raises(StudyError, match=r"config schemes.arms.x.budgets: .* is neither iterations|at least 1"):
        parse_budget(value, "schemes.arms.x.budgets")


def test_arm_iterations_in_iterations_and_p_units():
    budgets = [parse_budget("1.5P", "b"), parse_budget(2000, "b")]
    assert arm_iterations("a", budgets, unit_flops=P, init_flops=0.0, passes=4, flops_per_image=F,
                          batch_size=128) == [1125, 2000]
    with pytest.raises(StudyError, match="not all distinct"):
        arm_iterations("schemes.arms.a", [parse_budget("1.5P", "b"), parse_budget(1125, "b")], unit_flops=P,
                       init_flops=0.0, passes=4, flops_per_image=F, batch_size=128)
    with pytest.raises(StudyError, match="schemes.arms.a.budgets: 1.5P needs the model's pretraining compute P"):
        arm_iterations("schemes.arms.a", budgets, unit_flops=None, init_flops=0.0, passes=4, flops_per_image=F,
                       batch_size=128)


@pytest.mark.parametrize(("method", "init", "model", "sets", "message"), [
    ("ict", "pretrained", "tiny-s", {}, "schemes.arms.a.init: ict trains from scratch only, not from pretrained"),
    ("cd", "scratch", "tiny-s", {}, "schemes.arms.a.init: cd trains from pretrained only"),
    ("diffusion", "pretrained", "tiny-s", {}, "schemes.arms.a.init: diffusion trains from scratch only"),
    ("ect", "scratch", "tiny-xl", {}, "schemes.arms.a.model: 'tiny-xl' is not one of the models"),
    ("ect", "scratch", "tiny-s", {"training.iterations": 5}, "schemes.arms.a.set: training.iterations is set by"),
    ("ict", "scratch", "tiny-s", {"ict.total_iterations": 5}, "schemes.arms.a.set: ict.total_iterations is set by"),
])
def test_check_arm_refuses(method, init, model, sets, message):
    with pytest.raises(StudyError, match=message):
        check_arm("schemes.arms.a", method, init, model, ["tiny-s", "tiny-m"], sets)
    check_arm("schemes.arms.a", "ect", "scratch", "tiny-s", ["tiny-s"], {"optimizer.lr": 1e-3})  # fine


# --- the table on synthetic rows ----------------------------------------------------------------------------------


def _row(arm: str, seed: int, iteration: int, own_p: float, sampler: str, value: float) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(experiment="x", model="tiny-s", parameters=66_000, method=ARMS[arm].method, variant=f"{arm}/seed{seed}",
               iteration=iteration, training_images=iteration * 64, training_flops=own_p * P, sampler=sampler,
               nfe={"1step": 1, "2step": 2, "heun": 35}[sampler], metric="fd_digits", value=value, num_samples=1500,
               real_data=2.0, evaluation=f"{arm}/{seed}.json", value_std=0.1, seeds=3)
    return row


SYNTHETIC = {  # arm -> (iteration, own compute in P, 2-step values per seed)
    "ect": (750, 0.5, [15.0, 16.0, 17.0]),
    "ict": (1125, 1.5, [30.0, 32.0, 34.0]),       # far above ECT: a difference beyond the spread
    "cd": (500, 0.5, [16.5, 18.0, 19.5]),         # above ECT's mean, but within the spread
    "ect-scratch": (1125, 1.5, [40.0]),           # one seed: no call
}


def synthetic_metrics() -> pd.DataFrame:
    rows = []
    for arm, (iteration, own, values) in SYNTHETIC.items():
        for seed, value in enumerate(values):
            rows += [_row(arm, seed, iteration, own, "2step", value), _row(arm, seed, iteration, own, "1step",
                                                                           value + 5)]
    rows += [_row("diffusion", 0, 1000, 1.0, "heun", 8.0), _row("diffusion", 0, 1000, 1.0, "1step", 300.0)]
    return pd.DataFrame(rows, columns=COLUMNS)


def test_seed_rows_count_the_initialisation_in_total_compute():
    rows = seed_rows(synthetic_metrics(), ARMS, {"tiny-s": P})
    by_arm = rows.groupby("arm")["total_p"].unique()
    assert by_arm["ect"] == pytest.approx([1.5]) and by_arm["cd"] == pytest.approx([1.5])  # 1P + 0.5P
    assert by_arm["ict"] == pytest.approx([1.5]) and by_arm["diffusion"] == pytest.approx([1.0])  # from scratch
    assert (rows.loc[rows["arm"] == "ect", "total_flops"] == 1.5 * P).all()
    assert set(rows.loc[rows["arm"] == "ect", "training_seed"]) == {0, 1, 2}


def test_schemes_table_mean_std_and_calls():
    table = schemes_table(synthetic_metrics(), ARMS, {"tiny-s": P}).set_index(["arm", "sampler"])
    ect, ict, cd, scratch = (table.loc[(a, "2step")] for a in ("ect", "ict", "cd", "ect-scratch"))
    assert ect["value"] == 16.0 and ect["value_std"] == pytest.approx(np.std([15, 16, 17], ddof=1))
    assert ect["seeds"] == 3 and ect["total_p"] == pytest.approx(1.5) and ect["call"] == "reference"
    assert ect["scheme"] == "ECT (pretraining + tuning)" and ect["iteration"] == 750
    assert ict["difference"] == pytest.approx(16.0) and ict["call"] == "higher than ECT"
    # CD: 2.0 above ECT's mean, but the stds (1.5 and 1.0) sum to 2.5: not called.
    assert cd["difference"] == pytest.approx(2.0) and cd["call"] == "within the spread"
    assert scratch["seeds"] == 1 and math.isnan(scratch["value_std"]) and scratch["call"] == "fewer than 2 seeds"
    diffusion = table.loc[("diffusion", "heun")]
    assert diffusion["total_p"] == pytest.approx(1.0) and diffusion["call"] == ""  # no ECT at 1P to compare with
    assert table.loc[("ict", "1step"), "call"] == "higher than ECT"  # the 1-step rows compare 1-step with 1-step
    assert table.loc[("diffusion", "1step"), "value"] == 300.0


def test_schemes_table_refuses_unknown_arms_and_missing_units():
    with pytest.raises(ValueError, match="arm 'cd', which is not one of the arms"):
        seed_rows(synthetic_metrics(), {k: v for k, v in ARMS.items() if k != "cd"}, {"tiny-s": P})
    with pytest.raises(ValueError, match="no pretraining compute P for model 'tiny-s'"):
        seed_rows(synthetic_metrics(), ARMS, {})


def test_schemes_figure_draws_lines_and_bars(tmp_path):
    from ect.analysis.figures import save_figure

    fig = schemes_figure(synthetic_metrics(), ARMS, {"tiny-s": P}, "fd_digits", "FD")
    lines, twostep, bars = fig.axes[:3]
    assert {t.get_text() for t in lines.get_legend().get_texts()} >= {
        "ECT (pretraining + tuning)", "iCT from scratch", "CD (pretraining + distillation)", "ECT from scratch",
        "diffusion (raw 1-step)"}
    assert "diffusion (Heun)" in {t.get_text() for t in twostep.get_legend().get_texts()}
    # One bar per arm and budget; the pretrained arms stack pretraining (1P) under their own compute (0.5P).
    heights = sorted(round(p.get_height(), 6) for p in bars.patches)
    assert heights == sorted([1.0, 0.5, 1.0, 0.5, 1.5, 1.5, 1.0])
    assert any(t.get_text().startswith("16.00\n± 1.00\n(n=3)") for t in bars.texts)
    paths = save_figure(fig, tmp_path / "schemes_fd_digits")
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_bytes()[:5] == b"%PDF-"


def test_cli_writes_table_and_figure(tmp_path):
    csv = tmp_path / "schemes.csv"
    synthetic_metrics().to_csv(csv, index=False)
    arms = [a for name, arm in ARMS.items() for a in ("--arm", name, arm.method, arm.init, arm.model)]
    common = ["--metrics", str(csv), *arms, "--pretraining", "tiny-s", repr(P)]
    for args in (["table", "schemes", *common, "--out", str(tmp_path / "t")],
                 ["figure", "schemes", *common, "--metric", "fd_digits", "--out", str(tmp_path / "f")]):
        run = subprocess.run([sys.executable, "-m", "ect.cli", *args], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    table = pd.read_csv(tmp_path / "t.csv")
    assert len(table) == 10 and set(table["seeds"]) == {1, 3}
    markdown = (tmp_path / "t.md").read_text()
    assert "pseudo-Huber" in markdown and "not the LPIPS" in markdown
    ect_2step = next(line for line in markdown.splitlines()
                     if "| ECT (pretraining + tuning)" in line and "2step" in line)
    cells = [c.strip() for c in ect_2step.split("|")[1:-1]]
    assert cells[3:6] == ["750", "1.5", "1.85e+12"] and cells[11:14] == ["16.00", "1.00", "3"]
    assert cells[-1] == "reference"
    assert "\\begin{tabular}" in (tmp_path / "t.tex").read_text()
    assert (tmp_path / "f.png").stat().st_size > 5000
    # Rows of an arm the command was not told about: one line naming the file and the arm.
    fewer = [a for name, arm in ARMS.items() if name != "ect" for a in ("--arm", name, arm.method, arm.init, arm.model)]
    bad = subprocess.run([sys.executable, "-m", "ect.cli", "table", "schemes", "--metrics", str(csv), *fewer,
                          "--pretraining", "tiny-s", repr(P), "--out", str(tmp_path / "u")], capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert f"{csv} is not the comparison's metrics" in bad.stderr and "arm 'ect'" in bad.stderr
