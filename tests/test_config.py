"""Run-config validation: every bad input names its key before any work starts."""

from __future__ import annotations

import pytest

from ect.config import ConfigError, load_run_config, parse_set


def test_presets_load():
    for name in ("digits-pretrain", "digits-tune", "cifar10-tune", "cifar10-1hour"):
        cfg = load_run_config(name)
        assert cfg.training.iterations >= max(cfg.training.budgets or [1])


def test_set_overrides_and_types():
    cfg = load_run_config("digits-tune", ["ect.q=4", "training.budgets=[10, 20]", "training.iterations=20",
                                          "optimizer.lr=1e-4"])
    assert cfg.ect.q == 4.0 and isinstance(cfg.ect.q, float)
    assert cfg.training.budgets == [10, 20]
    assert cfg.optimizer.lr == pytest.approx(1e-4)
    assert parse_set(["a.b.c=[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}


@pytest.mark.parametrize(
    "sets,match",
    [
        (["ect.qq=2"], "ect.qq"),
        (["ect.q=fast"], "ect.q: expected float"),
        (["ect.q=0.5"], "ect.q: 0.5 is below the minimum"),
        (["ect.mapping=linear"], "ect.mapping"),
        (["training.iterations=true"], "training.iterations: expected int"),
        (["training.budgets=[5000]"], "training.budgets"),
        (["network.preset=huge"], "network.preset"),
        (["data.name=mnist"], "data.name"),
        (["training.batch_per_device=3"], "training.batch_per_device"),
        (["optimizer=3"], "optimizer"),
        (["sampling.t_max=0.3"], r"sampling.t_mid \[0.4\]: every intermediate time must lie in \(0, sampling.t_max"),
        (["sampling.t_mid=[0]"], r"sampling.t_mid \[0(\.0)?\]: every intermediate time"),
        (["novalue"], "key=value"),
    ],
)
def test_bad_values_name_the_key(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_run_config("digits-tune", sets)


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ect: [1, 2")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_run_config(bad)


def test_batch_per_device_follows_the_trainers_rule():
    # One rule (ect.config.batch_split): a cap above the batch is no cap; a cap must divide the batch.
    from ect.config import batch_split

    cfg = load_run_config("digits-tune", ["training.batch_size=64", "training.batch_per_device=256"])
    assert batch_split(cfg.training.batch_size, cfg.training.batch_per_device, 1) == (64, 1)
    with pytest.raises(ConfigError, match="batch_per_device 24 does not divide the per-process batch 64"):
        load_run_config("digits-tune", ["training.batch_size=64", "training.batch_per_device=24"])
