"""What a user of the workflow meets: overrides (--configfile, --config), one-line config errors, the GPUs a job is
granted, the headline table and summary a run ends with, and report captions that are true of their figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_workflow import CONFIGS, ROOT, snakemake

from ect import study_config
from ect.analysis import figures
from ect.analysis.collect import COLUMNS
from ect.analysis.scaling import fit_scaling
from ect.analysis.summary import headline_table, summary
from ect.cli import main
from ect.study import StudyError

SCHEMA = study_config.load_schema(ROOT / "workflow/schemas/config.schema.yaml")
RULES = ROOT / "workflow" / "rules"


# --- Overrides and config errors --------------------------------------------------------------------------------


def test_config_strings_are_coerced_to_the_schema_types_where_unambiguous():
    given = {"budgets": ["150", "300"], "evaluation": {"seeds": ["0", "1"], "device": "cpu", "batch": "64"},
             "resources": {"tune": {"gpu": "2"}}, "models": {"a": {"preset": "tiny-s", "import": "null",
                                                                   "resources": {"tune": {"mem_mb": "8000"}}}},
             "metrics": {"fd_digits": {"num": "1500"}}, "paper": "cifar10", "experiment": "007",
             "ablations": {"axes": {"c": {"key": "ect.c", "values": ["0.0", "1.0"]}}}}
    config = study_config.coerce(given, SCHEMA)
    assert config["budgets"] == [150, 300] and config["evaluation"]["seeds"] == [0, 1]
    assert config["evaluation"]["batch"] == 64 and config["evaluation"]["device"] == "cpu"
    assert config["resources"]["tune"]["gpu"] == 2 and config["models"]["a"]["resources"]["tune"]["mem_mb"] == 8000
    assert config["metrics"]["fd_digits"]["num"] == 1500
    # A string the schema allows stays a string (names, paths, ablation values that may be text).
    assert config["experiment"] == "007" and config["paper"] == "cifar10"
    assert config["models"]["a"]["import"] == "null"  # [string, null]: ambiguous, left alone
    assert config["ablations"]["axes"]["c"]["values"] == ["0.0", "1.0"]
    assert study_config.coerce({"budgets": ["ten"]}, SCHEMA) == {"budgets": ["ten"]}  # left for validation to name


def test_ablation_values_that_would_leave_their_directory_are_refused():
    study_config.check_ablation_values({"c": {"values": [0.0, 1.0]}, "mapping": {"values": ["const"]}})
    for bad in ("../../x", "a/b", "..", "x=y", " "):
        with pytest.raises(StudyError, match=r"^config ablations\.axes\.split\.values: "):
            study_config.check_ablation_values({"split": {"values": ["train", bad]}})


def _dry_run(tmp_path, *args):
    return snakemake(tmp_path / "work", "-n", *args, timeout=300)


def _one_line_error(run, message: str) -> None:
    output = run.stdout + run.stderr
    assert run.returncode != 0
    lines = [line for line in output.splitlines() if line.startswith("Error")]
    assert lines == [f"Error: {message}"], output[-2000:]
    assert "Traceback" not in output and "Failed validating" not in output and "$defs" not in output


def test_partial_configfile_fails_naming_the_key_and_the_way_to_layer(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("budgets: [20, 40]\n")
    run = _dry_run(tmp_path, "--configfile", str(mine))
    _one_line_error(run, f"config: 'experiment' is missing from --configfile {mine}, which replaces config.yaml; "
                         f"to change only some keys, layer yours over it: --configfile config.yaml {mine}")
    # The way it names works: the partial file layers over a full one.
    (tmp_path / "mine.yaml").write_text("budgets: [20, 40]\nablations: {budgets: [40]}\n")
    run = _dry_run(tmp_path, "--configfile", str(CONFIGS / "smoke.yaml"), str(mine))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "tune/tiny-s/snapshot-0000040.pt" in run.stdout and "tune/tiny-s/snapshot-0000060.pt" not in run.stdout


def test_config_values_from_the_command_line_are_coerced(tmp_path):
    run = _dry_run(tmp_path, "--configfile", str(CONFIGS / "smoke.yaml"), "--config", "budgets=[20,40]",
                   "ablations={budgets: [40]}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "tune/tiny-s/snapshot-0000040.pt" in run.stdout and "tune/tiny-s/snapshot-0000060.pt" not in run.stdout


@pytest.mark.parametrize(("config", "message"), [
    ("budgetz=[10]", "config: unknown key ('budgetz' was unexpected)"),
    ("budgets=[ten]", "config budgets.0: 'ten' is not of type 'integer'"),
    ("evaluation={precision: fp64}", "config evaluation.precision: 'fp64' is not one of "
                                     "['auto', 'fp32', 'tf32', 'bf16', 'fp16']"),
])
def test_schema_errors_are_one_line_naming_the_key(tmp_path, config, message):
    run = _dry_run(tmp_path, "--configfile", str(CONFIGS / "smoke.yaml"), "--config", config)
    _one_line_error(run, message)


def test_ablation_value_holding_a_path_is_refused_naming_the_key(tmp_path):
    config = yaml.safe_load((CONFIGS / "smoke.yaml").read_text())
    config["ablations"]["axes"]["split"] = {"key": "data.split", "values": ["../../x"]}
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(config))
    run = _dry_run(tmp_path, "--configfile", str(path))
    _one_line_error(run, "config ablations.axes.split.values: '../../x' cannot name a run directory "
                         "(ablations/split=<value>): no '/', '\\', '..' or '=' and not empty")
    assert not (tmp_path / "work" / "results").exists()


# --- The GPUs a job is granted -----------------------------------------------------------------------------------


def test_training_processes_follow_the_gpus_snakemake_grants(tmp_path):
    """cifar10 tunes on 4 GPUs; `--resources gpu=1` caps every job at one, so one process runs, never torchrun with
    4 (whose ranks 1-3 would crash on a one-GPU machine); with 2 GPUs, two processes."""
    preset = ("--configfile", str(CONFIGS / "cifar10.yaml"))
    assert yaml.safe_load((CONFIGS / "cifar10.yaml").read_text())["resources"]["tune"]["gpu"] == 4
    one = _dry_run(tmp_path, "-p", "--resources", "gpu=1", *preset)
    assert one.returncode == 0, one.stderr[-2000:]
    assert "torchrun" not in one.stdout and "} ect tune " in one.stdout  # after the job-step prefix (JOB_STEP)
    tune = re.findall(r"^rule tune:\n(?:    .*\n)*?    resources: (.*)$", one.stdout, re.MULTILINE)
    assert tune and all("gpu=1," in r and "nproc=1" in r for r in tune)
    two = _dry_run(tmp_path, "-p", "--resources", "gpu=2", *preset)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "torchrun --standalone --nproc_per_node=2 -m ect.cli tune" in two.stdout
    assert "--nproc_per_node=4" not in two.stdout


def test_a_target_after_resources_is_kept_with_a_double_dash(tmp_path):
    """`--resources` takes several values, so a target after it is read as one; `--` ends the options (docs)."""
    target = "results/cifar10/tune/ddpmpp/snapshot-0100000.pt"
    run = _dry_run(tmp_path, "--configfile", str(CONFIGS / "cifar10.yaml"), "--resources", "gpu=1", "--", target)
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"^tune\s+1$", run.stdout, re.MULTILINE) and "evaluate_ect" not in run.stdout


# --- Headline table, summary --------------------------------------------------------------------------------------


def _metrics(seeds: int = 3) -> pd.DataFrame:
    """A tidy metrics table of two model sizes: Heun, 1- and 2-step at three budgets, one ablation run."""
    rows = []
    for model, params in (("tiny-m", 147_000), ("tiny-s", 66_000)):
        def row(method, iteration, sampler, value, variant="base", std=None, model=model, params=params):
            rows.append(dict.fromkeys(COLUMNS) | {
                "experiment": "toy", "model": model, "parameters": params, "method": method, "variant": variant,
                "iteration": iteration, "training_images": iteration * 64, "training_flops": iteration * 1e9,
                "sampler": sampler, "nfe": {"heun": 35, "1step": 1, "2step": 2}[sampler], "metric": "fd_digits",
                "value": value, "num_samples": 100, "real_data": 3.04, "value_std": std, "seeds": 1})
        row("diffusion", 1000, "heun", 6.71, std=0.5)
        for it, scale in ((150, 500.0), (300, 100.0), (750, 19.0)):
            last = it == 750
            row("ect", it, "1step", scale * 1.02, std=0.46 if last else None)
            row("ect", it, "2step", scale * 0.8, std=0.3 if last else None)
        row("ect", 750, "2step", 25.0, variant="mapping=const")
    return pd.DataFrame(rows)


def test_headline_table_has_one_row_per_model_smallest_first():
    table = headline_table(_metrics())
    assert list(table.columns) == ["model", "diffusion, Heun", "ECT 1-step at 150 / 300 / 750 it.",
                                   "ECT 2-step at 150 / 300 / 750 it.", "real data"]
    assert list(table["model"]) == ["tiny-s (66k)", "tiny-m (147k)"]
    first = table.iloc[0]
    assert first["diffusion, Heun"] == "6.7 ± 0.5"
    assert first["ECT 1-step at 150 / 300 / 750 it."] == "510 / 102 / 19.4 ± 0.5"
    assert first["ECT 2-step at 150 / 300 / 750 it."] == "400 / 80.0 / 15.2 ± 0.3"  # the ablation run is not in it
    assert first["real data"] == "3.0"


def test_table_command_writes_html_with_rounded_numbers(tmp_path):
    _metrics().to_csv(tmp_path / "metrics.csv", index=False)
    for kind in ("headline", "main"):
        assert main(["table", kind, "--metrics", str(tmp_path / "metrics.csv"), "--out", str(tmp_path / kind)]) == 0
        page = (tmp_path / f"{kind}.html").read_text()
        assert page.startswith("<!DOCTYPE html>") and "<table" in page and "</html>" in page
    main_page = (tmp_path / "main.html").read_text()
    assert "<td>19.38</td>" in main_page and "19.38000" not in main_page  # value 19.0 × 1.02, as in main.md
    assert "19.38" in (tmp_path / "main.md").read_text()


def test_summary_prints_the_headline_and_where_results_are(tmp_path, capsys):
    results = tmp_path / "results/toy"
    _metrics().to_csv(tmp_path / "metrics.csv", index=False)
    (results / "tables").mkdir(parents=True)
    _metrics().to_csv(results / "metrics.csv", index=False)
    assert main(["table", "headline", "--metrics", str(results / "metrics.csv"),
                 "--out", str(results / "tables/headline")]) == 0
    (tmp_path / "figures/toy").mkdir(parents=True)
    (tmp_path / "figures/toy/loss.png").write_bytes(b"")
    (tmp_path / "report.html").write_text("<html></html>")
    capsys.readouterr()
    assert main(["summary", "--experiment", "toy", "--directory", str(tmp_path), "--elapsed", "479",
                 "--report", "report.html"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Study 'toy' finished in 7 min 59 s.")
    assert "| tiny-s (66k)  | 6.7 ± 0.5" in text
    assert "Tables:  results/toy/tables/{headline}.{md,csv,tex,html}" in text
    assert "Figures: figures/toy/{loss}.{png,pdf}" in text and "Report:  report.html" in text
    assert "Data:    results/toy/metrics.csv\n" in text + "\n"
    assert summary("toy", tmp_path) == summary("toy", tmp_path, report=Path("missing.html"))  # listed if it exists
    assert main(["summary", "--experiment", "nope", "--directory", str(tmp_path)]) == 2


# --- Report captions ----------------------------------------------------------------------------------------------


def _figure_rules() -> dict[str, tuple[str, str]]:
    """rule name -> (its `ect figure` kind, its caption file), from every rules file."""
    found = {}
    for smk in sorted(RULES.glob("*.smk")):
        for block in re.split(r"^(?=rule |use rule )", smk.read_text(), flags=re.MULTILINE):
            kind = re.search(r'"ect figure (\w+)', block)
            name = re.match(r"rule (\w+):", block)
            if kind and name:
                caption = re.search(r'report\([^)]*?\.png"[^)]*?caption="([^"]+)"', block, re.DOTALL)
                found[name[1]] = (kind[1], caption[1] if caption else "")
    return found


def test_every_figure_rule_has_a_caption_file():
    rules = _figure_rules()
    assert {"figure_scaling", "figure_samplers", "figure_loss", "figure_samples", "figure_ablation"} <= set(rules)
    for rule, (_, caption) in rules.items():
        assert caption, f"{rule}: its PNG is not in the report with a caption"
        path = (RULES / caption).resolve()
        assert path.is_file() and path.read_text().strip(), f"{rule}: {caption}"


def _schemes_args(tmp_path: Path) -> list[str]:
    """`ect figure schemes` arguments for the training-schemes comparison's synthetic rows."""
    from test_schemes_analysis import ARMS, P, synthetic_metrics

    synthetic_metrics().to_csv(tmp_path / "schemes.csv", index=False)
    arms = [a for name, arm in ARMS.items() for a in ("--arm", name, arm.method, arm.init, arm.model)]
    return ["--metrics", "schemes.csv", *arms, "--pretraining", "tiny-s", repr(P), "--metric", "fd_digits"]


def _drawn(kind: str, tmp_path: Path, monkeypatch) -> list:
    """The figure `ect figure KIND` draws from a small study, as the rule calls it."""
    metrics = _metrics()
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    fit_scaling(metrics).to_csv(tmp_path / "scaling.csv", index=False)
    (tmp_path / "config.yaml").write_text("run: {ect: {stage_length: 30}, training: {iterations: 100}}\n")
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"iteration": i, "loss": 1.0 / i}) + "\n"
                                                for i in range(10, 101, 10)))
    np.savez(tmp_path / "grid.npz", images=np.zeros((4, 1, 8, 8), dtype=np.uint8))
    args = {
        "scaling": ["--metrics", "metrics.csv", "--scaling", "scaling.csv", "--metric", "fd_digits"],
        "samplers": ["--metrics", "metrics.csv", "--metric", "fd_digits"],
        "ablation": ["--metrics", "metrics.csv", "--axis", "mapping", "--base", "sigmoid", "--model", "tiny-s"],
        "loss": ["--log", "tiny-s", "diffusion", "log.jsonl", "--log", "tiny-s", "ect", "log.jsonl"],
        "samples": ["--samples", "tiny-s", "heun", "grid.npz", "--samples", "tiny-s", "2step", "grid.npz"],
        "schemes": _schemes_args(tmp_path),
    }[kind]
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem: drawn.append(fig) or [])
    monkeypatch.chdir(tmp_path)
    assert main(["figure", kind, *args, "--out", "fig"]) == 0
    return drawn


LOG_CLAIM = re.compile(r"\blog[- ](?:log|scale|axis|axes)\b|\blogarithmic", re.IGNORECASE)


@pytest.mark.parametrize("rule", sorted(_figure_rules()))
def test_caption_says_log_scale_exactly_when_the_figure_has_a_log_axis(rule, tmp_path, monkeypatch):
    kind, caption = _figure_rules()[rule]
    (fig,) = _drawn(kind, tmp_path, monkeypatch)
    log_axes = any(scale == "log" for ax in fig.axes for scale in (ax.get_xscale(), ax.get_yscale()))
    text = (RULES / caption).read_text()
    assert bool(LOG_CLAIM.search(text)) == log_axes, f"{caption}: log axes in the figure: {log_axes}"


def test_samples_figure_has_real_images_first_and_the_metric_in_every_title(tmp_path, monkeypatch):
    from ect.data import load_dataset

    real = load_dataset("digits").images
    _metrics().to_csv(tmp_path / "metrics.csv", index=False)
    args = []
    for model in ("tiny-s", "tiny-m"):
        for sampler in ("heun", "1step", "2step"):
            np.savez(tmp_path / f"{model}-{sampler}.npz", images=np.full((16, 1, 8, 8), 7, dtype=np.uint8))
            args += ["--samples", model, sampler, f"{model}-{sampler}.npz"]
    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem: drawn.append(fig) or [])
    monkeypatch.chdir(tmp_path)
    assert main(["figure", "samples", *args, "--iteration", "750", "--metrics", "metrics.csv", "--metric",
                 "fd_digits", "--real", "digits", "--out", "samples"]) == 0
    (fig,) = drawn
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["real data\nFD 3.0", "tiny-s: diffusion, Heun (35 NFE)\nFD 6.7",
                          "tiny-s: ECT 1-step (750 it.)\nFD 19.4", "tiny-s: ECT 2-step (750 it.)\nFD 15.2"]
    first = fig.axes[0].images[0].get_array()  # the real column shows the dataset's first 16 training images
    assert first.shape == (4 * 9 + 1, 4 * 9 + 1) and first[1:9, 1:9].tolist() == real[0, 0].tolist()
    assert fig.get_size_inches()[0] >= 3.4 * 4  # larger cells than the 2.6-inch ones before
    assert main(["figure", "samples", *args, "--metrics", "metrics.csv", "--metric", "fid", "--out", "x"]) == 2
