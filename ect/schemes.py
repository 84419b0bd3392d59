"""The training-schemes comparison (issue 18) at planning time: budgets in units of compute, and the arm checks.

An *arm* of the workflow config's ``schemes`` section is one training method from one initialisation on one model
size, run with each of its training seeds to each of its budgets. A budget is either a number of iterations or a
total compute in units of P, the model's pretraining FLOPs (``"1.5P"``). Total compute counts the initialisation:
an arm tuned or distilled from the pretrained model starts at 1P, one trained from scratch at 0. Pure functions,
so the conversion is testable without Snakemake; every check raises :class:`ect.study.StudyError` with one line
naming the key.

**Rounding.** An arm's iterations for a budget of k·P are ``(k·P − init FLOPs) / (passes × forward FLOPs per image
× batch)`` rounded to the nearest integer (halves up): the run's total compute is then within half an iteration's
FLOPs of k·P, above or below.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ect.methods import get_method
from ect.study import SEGMENT_KEYS, StudyError

# The initialisations each method's --init rule allows (ect.methods): ECT does both, tuning or ECT from scratch.
INITS_OF_RULE = {"refused": ("scratch",), "optional": ("pretrained", "scratch"), "required": ("pretrained",)}
# Forward-pass equivalents per training image, as the trainer counts them: forward + backward ≈ 3, plus one target
# pass for a consistency objective, plus the teacher's ODE step for a method with a teacher (Heun: 2 evaluations,
# Euler: 1; the teacher is the same network as the student).
TEACHER_EVALUATIONS = {"heun": 2, "euler": 1}
PRETRAIN_PASSES = 3
P_UNIT = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)P$")
# Set by the workflow for every scheme run: the segment's iterations and, for iCT, the curriculum's length.
SCHEME_SEGMENT_KEYS = (*SEGMENT_KEYS, "ict.total_iterations")


@dataclass(frozen=True)
class Budget:
    """A budget as stated in the config: ``p`` units of total compute, or ``iterations``."""

    label: str
    p: float | None = None
    iterations: int | None = None


def parse_budget(value: Any, where: str) -> Budget:
    """``"1.5P"`` (total compute in units of the model's pretraining) or an integer number of iterations."""
    if isinstance(value, bool):
        raise StudyError(f"config {where}: {value!r} is neither iterations nor a compute budget like '1.5P'")
    if isinstance(value, int):
        if value < 1:
            raise StudyError(f"config {where}: {value} iterations must be at least 1")
        return Budget(label=str(value), iterations=value)
    match = P_UNIT.match(str(value).strip())
    if not match or float(match[1]) <= 0:
        raise StudyError(f"config {where}: {value!r} is neither iterations nor a compute budget like '1.5P'")
    return Budget(label=f"{float(match[1]):g}P", p=float(match[1]))


def allowed_inits(method: str) -> tuple[str, ...]:
    """``pretrained`` and/or ``scratch``; the first is the arm's default."""
    return INITS_OF_RULE[get_method(method).init]


def passes_per_image(method: str, solver: str = "heun") -> int:
    """Forward-pass equivalents one training image costs under ``method`` (a teacher's ODE step with ``solver``)."""
    row = get_method(method)
    return (PRETRAIN_PASSES + (row.objective == "consistency")
            + (TEACHER_EVALUATIONS[solver] if row.target == "teacher_ode" else 0))


def pretraining_flops(flops_per_image: float, batch_size: int, iterations: int) -> float:
    """P: the FLOPs of a model's diffusion pretraining (3 forward-pass equivalents per image)."""
    return PRETRAIN_PASSES * flops_per_image * batch_size * iterations


def budget_iterations(p: float, unit_flops: float, init_flops: float, passes: int, flops_per_image: float,
                      batch_size: int, where: str = "budget") -> int:
    """Iterations that bring a run from ``init_flops`` to a total of ``p`` × ``unit_flops`` (nearest integer)."""
    per_iteration = passes * flops_per_image * batch_size
    exact = (p * unit_flops - init_flops) / per_iteration
    iterations = math.floor(exact + 0.5)
    if iterations < 1:
        raise StudyError(f"config {where}: {p:g}P leaves no iterations after the initialisation's "
                         f"{init_flops / unit_flops:.3g}P (one iteration costs {per_iteration / unit_flops:.2g}P)")
    return iterations


def check_arm(where: str, method: str, init: str, model: str, models: list[str], sets: dict[str, Any]) -> None:
    """The arm's method, initialisation, model and overrides fit together (before any run config is resolved)."""
    allowed = allowed_inits(method)
    if init not in allowed:
        raise StudyError(f"config {where}.init: {method} trains from {' or '.join(allowed)} only, "
                         f"not from {init}")
    if model not in models:
        raise StudyError(f"config {where}.model: {model!r} is not one of the models {models}")
    for key in SCHEME_SEGMENT_KEYS:
        if key in sets:
            raise StudyError(f"config {where}.set: {key} is set by the workflow; state the arm's `budgets` instead")


def arm_iterations(where: str, budgets: list[Budget], *, unit_flops: float | None, init_flops: float, passes: int,
                   flops_per_image: float, batch_size: int) -> list[int]:
    """Each budget of an arm in iterations; they must be distinct (a run keeps one snapshot at each)."""
    iterations = []
    for k, budget in enumerate(budgets):
        if budget.iterations is not None:
            iterations.append(budget.iterations)
            continue
        if unit_flops is None:
            raise StudyError(f"config {where}.budgets: {budget.label} needs the model's pretraining compute P; "
                             "give the imported model's `pretrain_images` in schemes.pretrain_images")
        iterations.append(budget_iterations(budget.p, unit_flops, init_flops, passes, flops_per_image, batch_size,
                                            f"{where}.budgets[{k}]"))
    if len(set(iterations)) != len(iterations):
        raise StudyError(f"config {where}.budgets: {[b.label for b in budgets]} give the iterations {iterations}, "
                         "not all distinct")
    return iterations
