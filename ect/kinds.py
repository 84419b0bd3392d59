"""The two kinds of model, the training method that makes each, and the samplers that fit each: one table.

A *method* is what ``ect pretrain``/``ect tune`` run and what the results tables call a row (``diffusion``,
``ect``); a *kind* is what a checkpoint holds (``diffusion``, ``consistency``; the checkpoint field ``kind``).
This module imports nothing heavy, so the command-line parser and the workflow can read it cheaply.
"""

from __future__ import annotations

KIND_OF_METHOD = {"diffusion": "diffusion", "ect": "consistency"}
METHOD_OF_KIND = {kind: method for method, kind in KIND_OF_METHOD.items()}
KINDS = tuple(METHOD_OF_KIND)

SAMPLERS = ("1step", "2step", "heun")
# Samplers each kind supports; 1-step sampling of a diffusion model is the usual baseline.
SAMPLERS_BY_KIND = {"diffusion": ("heun", "1step"), "consistency": ("1step", "2step")}
