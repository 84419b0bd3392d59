"""The official EDM / EDM2 network pickles that ECT starts from: where they live and what they hold.

A table of plain data (no torch), so the command line can list the names without importing the importer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OfficialSource:
    url: str
    preset: str  # our network preset the weights load into
    dataset: str  # the ect dataset it was trained on (recorded so `ect evaluate` knows its reference data)
    sha256: str | None = None  # published checksum, enforced; None: trust on first use
    reported_sha256: str | None = None  # third-party report, only compared (a mismatch warns)
    note: str = ""


_EDM_ROOT = "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained"
_EDM2_ROOT = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions"

# File names: EDM's README / ECT's run_ecm.sh (CIFAR-10); EDM2's generate_images.py ``config_presets``
# ``edm2-img64-{s,m,l,xl}-fid`` (ImageNet 64, the FID-optimal EMA lengths) - ECT's run_imgnet_ecm.sh uses the
# S file; which M/L/XL files the ECT authors started from is not stated in their code.
# Checksums: we found no checksums published by NVIDIA (or the ECT authors) for these files, so ``sha256`` is None
# everywhere and we use trust-on-first-use: the hash of the first download is stored next to the cached file
# (``<file>.sha256``), every later use is verified against it, and each checkpoint records the hash it came from.
OFFICIAL_SOURCES: dict[str, OfficialSource] = {
    "edm-cifar10-32x32-uncond-vp": OfficialSource(
        url=f"{_EDM_ROOT}/edm-cifar10-32x32-uncond-vp.pkl",
        preset="ddpmpp-cifar10",
        dataset="cifar10",
        note="EDM DDPM++ (VP), unconditional CIFAR-10; ECT CIFAR-10 initialisation",
    ),
    "edm2-img64-s": OfficialSource(
        url=f"{_EDM2_ROOT}/edm2-img64-s-1073741-0.075.pkl",
        preset="edm2-img64-s",
        dataset="imagenet64",
        # Reported by a third-party ECT reproduction's provenance notes for its archived copy of this file;
        # not verified by us (no network access while writing this), so only compared, never enforced.
        reported_sha256="044f4aeb819b2a4164b796a5f4944c4fadca5d789a13b7a72ddc079a7c7fc434",
        note="EDM2-S ImageNet 64, EMA 0.075 (EDM2 FID 1.58); ECT ImageNet S initialisation",
    ),
    "edm2-img64-m": OfficialSource(
        url=f"{_EDM2_ROOT}/edm2-img64-m-2147483-0.060.pkl",
        preset="edm2-img64-m",
        dataset="imagenet64",
        note="EDM2-M ImageNet 64, EMA 0.060 (EDM2 FID 1.43); ECT's M initialisation not stated by ECT",
    ),
    "edm2-img64-l": OfficialSource(
        url=f"{_EDM2_ROOT}/edm2-img64-l-1073741-0.040.pkl",
        preset="edm2-img64-l",
        dataset="imagenet64",
        note="EDM2-L ImageNet 64, EMA 0.040 (EDM2 FID 1.33); ECT's L initialisation not stated by ECT",
    ),
    "edm2-img64-xl": OfficialSource(
        url=f"{_EDM2_ROOT}/edm2-img64-xl-0671088-0.040.pkl",
        preset="edm2-img64-xl",
        dataset="imagenet64",
        note="EDM2-XL ImageNet 64, EMA 0.040 (EDM2 FID 1.33); ECT's XL initialisation not stated by ECT",
    ),
}


def official_source(source: str) -> OfficialSource | None:
    """The official source named ``source`` (a name or its URL), or None."""
    if source in OFFICIAL_SOURCES:
        return OFFICIAL_SOURCES[source]
    return next((s for s in OFFICIAL_SOURCES.values() if s.url == source), None)
