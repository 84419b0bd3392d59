"""The two kinds of model, the training methods that make each, and the samplers that fit each.

A *method* is what ``ect train --method`` runs and what the results tables call a row (``diffusion``, ``ect``,
``ict``, ``cd``: :data:`ect.methods.METHODS`); a *kind* is what a checkpoint holds (``diffusion``,
``consistency``; the checkpoint field ``kind``). This module imports nothing heavy, so the command-line parser and
the workflow can read it cheaply.
"""

from __future__ import annotations

from ect.methods import METHODS

KIND_OF_METHOD = {name: method.kind for name, method in METHODS.items()}
# The method a record of each kind came from when it names none (checkpoints written before the method field, and
# imported EDM models).
METHOD_OF_KIND = {"diffusion": "diffusion", "consistency": "ect"}
KINDS = tuple(METHOD_OF_KIND)

SAMPLERS = ("1step", "2step", "heun")
# Samplers each kind supports; 1-step sampling of a diffusion model is the usual baseline.
SAMPLERS_BY_KIND = {"diffusion": ("heun", "1step"), "consistency": ("1step", "2step")}
