"""Run configuration: typed sections, YAML files, ``--set key=value`` overrides, strict validation.

Every problem (unknown key, wrong type, value out of range, missing file) raises :class:`ConfigError`
naming the dotted key, before any expensive work starts. The resolved config is written next to every
result so a run can be reproduced from its output directory alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ect.errors import UserError

SEED_MAX = 2**63 - 1  # what numpy, torch.manual_seed and the per-sample generators all accept
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class ConfigError(UserError):
    """A config key is unknown, has the wrong type or an invalid value."""


def _opt(default: Any, *, min: float | None = None, max: float | None = None, choices: tuple | None = None,
         doc: str = "") -> Any:
    meta = {"min": min, "max": max, "choices": choices, "doc": doc}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = _opt("digits", doc="dataset name (ect.data.DATASETS)")
    split: str = _opt("train", doc="training split")
    data_dir: str | None = _opt(None, doc="where the dataset lives or is downloaded to")
    conditional: bool = _opt(False, doc="train a class-conditional model")


@dataclass
class NetworkConfig:
    preset: str = _opt("tiny-m", doc="network preset (ect.networks)")
    dropout: float | None = _opt(None, min=0.0, max=1.0, doc="dropout rate; null = the preset's")


@dataclass
class DiffusionConfig:
    """EDM denoising loss for pretraining: ln σ ~ N(P_mean, P_std²)."""

    P_mean: float = _opt(-1.2)
    P_std: float = _opt(1.2, min=0.0)


@dataclass
class ECTConfig:
    """ECT loss and its stage schedule (defaults: the official CIFAR-10 recipe)."""

    P_mean: float = _opt(-1.1)
    P_std: float = _opt(2.0, min=0.0)
    mapping: str = _opt("sigmoid", choices=("const", "sigmoid"))
    q: float = _opt(2.0, min=1.0)
    k: float = _opt(8.0, min=0.0)
    b: float = _opt(1.0, min=0.0)
    c: float = _opt(0.0, min=0.0, doc="adaptive-weighting constant of the pseudo-Huber distance")
    weighting: str = _opt("inverse_dt", choices=("inverse_dt", "snr_plus_one", "uniform"))
    stage_length: int = _opt(25000, min=1, doc="iterations per stage of the mapping function")


@dataclass
class ICTConfig:
    """Improved consistency training (Song & Dhariwal 2023): Karras grid, doubling curriculum, log-normal index
    distribution, pseudo-Huber distance (defaults: the published values; docs/training-schemes.md)."""

    sigma_min: float = _opt(0.002, min=0.0, doc="smallest Karras boundary σ_1")
    sigma_max: float = _opt(80.0, min=0.0, doc="largest Karras boundary σ_N")
    rho: float = _opt(7.0, min=0.0, doc="Karras grid exponent ρ")
    s0: int = _opt(10, min=1, doc="initial discretisation steps of the curriculum")
    s1: int = _opt(1280, min=1, doc="final discretisation steps of the curriculum")
    total_iterations: int | None = _opt(None, min=1, doc="K of the curriculum N(k); null = training.iterations "
                                        "(set it to the final budget for a run continued in segments)")
    P_mean: float = _opt(-1.1, doc="log-normal index distribution: mean of ln σ")
    P_std: float = _opt(2.0, min=0.0, doc="log-normal index distribution: std of ln σ")
    c: float | None = _opt(None, min=0.0, doc="pseudo-Huber constant; null = 0.00054·sqrt(d), d = pixels × channels")


@dataclass
class CDConfig:
    """Consistency distillation (Song et al. 2023) from the --init diffusion model: a fixed Karras grid, the target
    point from one step of the teacher's probability-flow ODE (defaults: the published CIFAR-10 values)."""

    sigma_min: float = _opt(0.002, min=0.0, doc="smallest Karras boundary σ_1")
    sigma_max: float = _opt(80.0, min=0.0, doc="largest Karras boundary σ_N")
    rho: float = _opt(7.0, min=0.0, doc="Karras grid exponent ρ")
    steps: int = _opt(18, min=2, doc="N, the boundaries of the grid; the index is uniform over its N − 1 intervals")
    solver: str = _opt("heun", choices=("heun", "euler"), doc="the teacher's ODE step: heun (2 evaluations), euler (1)")
    target_ema: float = _opt(0.0, min=0.0, max=1.0, doc="EMA rate μ of the target network; 0 = the online weights "
                             "under stop-gradient")
    weighting: str = _opt("uniform", choices=("uniform", "inverse_dt"),
                          doc="λ: uniform (the CD paper) or 1/(σ_{i+1} − σ_i) (iCT)")
    c: float | None = _opt(None, min=0.0, doc="pseudo-Huber constant; null = 0.00054·sqrt(d) (the CD paper used LPIPS)")


@dataclass
class OptimizerConfig:
    name: str = _opt("radam", choices=("adam", "radam"))
    lr: float = _opt(1e-4, min=0.0)
    betas: list[float] = _opt([0.9, 0.999])
    eps: float = _opt(1e-8, min=0.0)
    decay_iterations: int = _opt(0, min=0, doc="EDM2 inverse-sqrt decay: lr/sqrt(max(it/decay, 1)); 0 = off")
    rampup_iterations: int = _opt(0, min=0, doc="linear learning-rate warm-up; 0 = off")


@dataclass
class EMAConfig:
    kind: str = _opt("beta", choices=("beta", "halflife", "power"))
    beta: float = _opt(0.9999, min=0.0, max=1.0, doc="kind=beta: fixed decay per iteration")
    halflife_images: float = _opt(500_000.0, min=0.0, doc="kind=halflife: EMA half-life in training images")
    rampup_ratio: float | None = _opt(0.05, min=0.0, doc="kind=halflife: half-life ≤ ratio × images seen")
    power_std: float = _opt(0.05, min=0.0, doc="kind=power: EDM2's relative standard deviation σ_rel")


@dataclass
class TrainingConfig:
    seed: int = _opt(0, min=0, max=SEED_MAX)
    iterations: int = _opt(1000, min=1, doc="total training iterations")
    batch_size: int = _opt(128, min=1, doc="global batch size per iteration")
    batch_per_device: int | None = _opt(None, min=1, doc="micro-batch per process; accumulates gradients")
    budgets: list[int] = _opt([], doc="iterations at which to keep a snapshot (compute budgets)")
    checkpoint_every: int = _opt(500, min=1, doc="iterations between resumable checkpoints")
    log_every: int = _opt(50, min=1, doc="iterations between log lines")
    device: str = _opt("auto", doc="auto, cpu, cuda or cuda:N")
    precision: str = _opt("fp32", choices=("fp32", "tf32", "bf16"),
                          doc="fp32: strict (TF32 off; official CIFAR-10), tf32 (official ImageNet), bf16 autocast "
                              "(fast mode); see ect.precision")
    channels_last: bool = _opt(False, doc="channels-last memory format for network and data")
    compile: bool = _opt(False, doc="torch.compile the network (the fast mode with bf16)")
    threads: int | None = _opt(None, min=1, doc="torch CPU threads; null = torch's default")


@dataclass
class SamplingConfig:
    t_mid: list[float] = _opt([0.821], min=0.0, doc="intermediate times of the 2-step sampler")
    t_max: float = _opt(80.0, min=0.0, doc="time the 1- and 2-step samplers start from (official: EDM's σ_max, 80)")
    grid_size: int = _opt(64, min=0, doc="images in the sample grid written with each snapshot")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    ect: ECTConfig = field(default_factory=ECTConfig)
    ict: ICTConfig = field(default_factory=ICTConfig)
    cd: CDConfig = field(default_factory=CDConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_value(key: str, value: Any, tp: Any, meta: dict) -> Any:
    """Check ``value`` against type ``tp`` and the range/choices in ``meta``; returns the coerced value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {item.__name__}, got {value!r}")
        return [_check_value(f"{key}[{i}]", v, item, meta) for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):
            value = float(value)
    if tp is float and isinstance(value, str):  # YAML reads "1e-4" as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key}: {value!r} is not one of {list(meta['choices'])}")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{key}: {value!r} is below the minimum {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{key}: {value!r} is above the maximum {meta['max']}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; known keys in this section: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(f"{prefix}{name}", value, tp, dict(fields[name].metadata))
    return cls(**kwargs)


def merge_dicts(base: dict, update: dict) -> dict:
    """``base`` updated by ``update``, nested mappings merged key by key."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``["ect.q=4", "training.budgets=[100,200]"]`` → nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item!r}: the key must be section.name, e.g. ect.q")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse {raw!r} as a YAML value "
                              f"({str(exc).splitlines()[0]})") from exc
        node = out
        for i, p in enumerate(parts[:-1]):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node[parts[-1]] = value
    return out


def preset_path(name: str) -> Path:
    """Path of a config preset shipped with the package (``ect/configs/NAME.yaml``)."""
    return Path(str(resources.files("ect") / "configs" / f"{name}.yaml"))


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def load_run_config(config: str | Path | None = None, sets: list[str] | None = None) -> RunConfig:
    """Defaults ← YAML file (a path, or the name of a packaged preset) ← ``--set`` overrides."""
    values: dict[str, Any] = {}
    if config is not None:
        path = Path(config)
        if not path.is_file() and preset_path(str(config)).is_file():
            path = preset_path(str(config))
        values = read_yaml(path)
    values = merge_dicts(values, parse_set(sets or []))
    cfg = _build(RunConfig, values)
    _check_consistency(cfg)
    return cfg


def config_from_dict(values: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, values)
    _check_consistency(cfg)
    return cfg


def batch_split(batch_size: int, batch_per_device: int | None, world_size: int) -> tuple[int, int]:
    """(micro-batch, accumulation rounds) of each process for a global batch split over ``world_size`` processes.

    The one rule for ``training.batch_per_device``, used by the config check (1 process), the workflow (its
    GPUs per job) and the trainer: it caps the micro-batch (None, or a cap above the per-process batch: the whole
    per-process batch in one round) and must divide the per-process batch.
    """
    per_process = batch_size // world_size
    if per_process * world_size != batch_size:
        raise ConfigError(f"training.batch_size {batch_size} is not divisible by the {world_size} processes")
    micro = min(batch_per_device or per_process, per_process)
    if per_process % micro:
        raise ConfigError(f"training.batch_per_device {micro} does not divide the per-process batch {per_process}")
    return micro, per_process // micro


def _check_consistency(cfg: RunConfig) -> None:
    t = cfg.training
    if len(cfg.optimizer.betas) != 2:
        raise ConfigError(f"optimizer.betas: expected two values, got {cfg.optimizer.betas}")
    batch_split(t.batch_size, t.batch_per_device, 1)  # the split over processes is checked when they are known
    for b in t.budgets:
        if not 1 <= b <= t.iterations:
            raise ConfigError(f"training.budgets: {b} is outside 1…training.iterations ({t.iterations})")
    from ect.networks import preset_names

    if cfg.network.preset not in preset_names():
        raise ConfigError(f"network.preset: unknown preset {cfg.network.preset!r}; known: {preset_names()}")
    from ect.data import DATASETS

    if cfg.data.name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {cfg.data.name!r}; known: {sorted(DATASETS)}")
    if not all(0 < t < cfg.sampling.t_max for t in cfg.sampling.t_mid):
        raise ConfigError(f"sampling.t_mid {cfg.sampling.t_mid}: every intermediate time must lie in "
                          f"(0, sampling.t_max = {cfg.sampling.t_max:g})")
    for name, grid in (("ict", cfg.ict), ("cd", cfg.cd)):
        if not 0 < grid.sigma_min < grid.sigma_max:
            raise ConfigError(f"{name}.sigma_min {grid.sigma_min:g} must be positive and below {name}.sigma_max "
                              f"{grid.sigma_max:g}")
        if grid.rho <= 0:
            raise ConfigError(f"{name}.rho: {grid.rho!r} must be positive")
    if cfg.ict.s1 < cfg.ict.s0:
        raise ConfigError(f"ict.s1 ({cfg.ict.s1}) is below ict.s0 ({cfg.ict.s0}): the curriculum only doubles")
    if cfg.cd.target_ema >= 1:
        raise ConfigError(f"cd.target_ema: {cfg.cd.target_ema!r} would freeze the target network; use μ < 1")
    if not DEVICE_PATTERN.fullmatch(cfg.training.device):
        raise ConfigError(f"training.device: {cfg.training.device!r} is not auto, cpu, cuda or cuda:N")


def check_seeds(first: int, num: int, key: str = "--seed") -> None:
    """Seeds first … first+num−1 must be non-negative and fit the 63 bits every generator accepts."""
    if first < 0 or first + num - 1 > SEED_MAX:
        raise ConfigError(f"{key}: seeds {first}…{first + num - 1} are outside 0…2^63−1")


def check_output_path(path: str | Path) -> None:
    """Fail now, not after the work, if ``path`` cannot be written (a parent is a file, no permission)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {path}: cannot create {path.parent}: {exc.strerror or exc}") from exc
