"""The three places that pin dependencies agree, so every set-up path installs the same versions."""

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
