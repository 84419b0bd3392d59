"""The training methods: one table of what each draws, how it makes its target, what it starts from.

Every method is a row of :data:`METHODS`, run by the one training loop (:mod:`ect.training`): the trainer builds
its objective from the row's switches (:mod:`ect.objectives`) instead of branching on the method's name.
Formulas and sources: docs/training-schemes.md. This module imports nothing heavy, so the command-line parser
and the workflow can read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

INIT_RULES = ("refused", "optional", "required")


@dataclass(frozen=True)
class Method:
    """One training method.

    ``objective``: ``edm`` (denoising loss) or ``consistency`` (one consistency loss, with the switches below).
    ``pairs``: how σ (EDM) or the pair (t, r) is drawn: ``lognormal`` σ, ECT's ``mapping`` r(t), the iCT curriculum
    grid ``ict_grid`` or the fixed CD grid ``cd_grid``.
    ``target``: how the target point x_r is made: ``noise`` (x0 + r·ε, the same ε as x_t) or ``teacher_ode`` (one
    step of the teacher's probability-flow ODE from x_t); None for the EDM objective.
    ``init``: whether ``--init`` is ``refused``, ``optional`` or ``required``; ``init_kind`` the checkpoint kind it
    must hold; ``teacher``: the init checkpoint is also the frozen teacher.
    ``stream``: the method's id among the random streams (:data:`ect.training.METHOD_STREAMS`); never reused, so
    no method replays another's draws with the same ``training.seed``.
    ``section``: the run-config section holding its loss settings.
    """

    name: str
    kind: str
    objective: str
    pairs: str
    target: str | None
    init: str
    init_kind: str | None
    teacher: bool
    stream: int
    section: str
    label: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("diffusion", "diffusion", "edm", "lognormal", None, "refused", None, False, 0, "diffusion",
               "diffusion pretraining (EDM)"),
        Method("ect", "consistency", "consistency", "mapping", "noise", "optional", "diffusion", False, 1, "ect",
               "easy consistency tuning (from a diffusion model, or from scratch)"),
        Method("ict", "consistency", "consistency", "ict_grid", "noise", "refused", None, False, 2, "ict",
               "improved consistency training from scratch"),
        Method("cd", "consistency", "consistency", "cd_grid", "teacher_ode", "required", "diffusion", True, 3, "cd",
               "consistency distillation from a diffusion model"),
    )
}


def get_method(name: str) -> Method:
    """The row of ``name``; a :class:`ValueError` naming the known methods otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown training method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]
