"""Packaging: the three places that pin dependencies agree, and the package ships its data files."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    return {m.group(1).lower(): m.group(2) for m in (re.match(r"^\s*([A-Za-z0-9_.-]+)==(\S+)", s) for s in lines) if m}


def test_pins_agree():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = _pins(next(d for d in env["dependencies"] if isinstance(d, dict))["pip"])
    assert req == py == conda
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1" and req["torch-fidelity"] == "0.4.0"
    assert req["snakemake"].startswith("9.")


def test_every_data_file_of_the_package_is_shipped():
    """A non-editable install carries the presets and the published numbers (package-data globs cover them)."""
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ect"]
    package = ROOT / "ect"
    data_files = {p for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")}
    shipped = {p for pattern in globs for p in package.glob(pattern)}
    assert data_files and data_files <= shipped, sorted(map(str, data_files - shipped))
    assert package / "analysis" / "paper_results.yaml" in shipped
