"""The metrics by name: which feature extractor and layer, which datasets, how many samples by default.

This module imports nothing heavy (no torch, no torch-fidelity), so that the workflow's planning and the command-line
parser can read the registry cheaply; :mod:`ect.metrics` computes the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

INCEPTION_EXTRACTOR = "inception-v3-compat"
DINOV2_EXTRACTOR = "dinov2-vit-l-14-dgm"
DIGITS_EXTRACTOR = "digits-cnn"
DIGITS_LEVELS = 17  # scikit-learn's digits are stored as grey levels 0…16


@dataclass(frozen=True)
class MetricSpec:
    extractor: str
    layer: str
    channels: int = 3  # image channels the extractor reads
    datasets: tuple[str, ...] | None = None  # datasets it applies to; None = any with ``channels`` channels
    reference_split: str = "train"
    real_split: str | None = None  # unseen real images: what N of them score is reported beside a model's score
    levels: int | None = None  # quantise generated images to the data's grey levels first
    default_num: int = 50_000  # generated samples (the paper's fid50k_full)


METRICS = {
    "fid": MetricSpec(INCEPTION_EXTRACTOR, "2048"),
    "fd_dinov2": MetricSpec(DINOV2_EXTRACTOR, "dinov2"),
    "fd_digits": MetricSpec(DIGITS_EXTRACTOR, "penultimate", channels=1, datasets=("digits",), real_split="heldout",
                            levels=DIGITS_LEVELS, default_num=1_500),
}
