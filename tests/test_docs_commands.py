"""Every command in README.md and docs/**/*.md runs, in a safe form, so examples cannot go stale.

The commands are those of fenced ```bash / ```sh blocks (a block right after a line `<!-- norun -->` is skipped:
installing packages, submitting to a cluster). Each block runs in its own scratch directory that links the
repository's files, so nothing it writes lands in the repository. The safe forms:

- ``snakemake …``: a dry run (``-n`` added; ``--report FILE``, which needs a finished study, left out);
- ``ect …`` and ``torchrun … -m ect.cli …``: parsed by ``ect``'s own argument parser (every subcommand, option and
  choice must exist); nothing is trained;
- ``make TARGET``: ``make -n TARGET`` (the target exists);
- ``python SCRIPT …`` (also after ``nice``): only with ``--help``, which it then runs;
- ``echo``, ``cat``, ``ls``, ``mkdir``, ``cp``, ``cd``: run as written in the scratch directory; ``source``: the file
  must exist in the repository or be made by ``make``.

Anything else fails, naming the file and line, until it gets a safe form here or a `<!-- norun -->` mark.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ect.cli import build_parser
from ect.config import load_run_config
from ect.runs import snapshot_name

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
NORUN = "<!-- norun -->"
SHELL = ("bash", "sh", "shell", "console")
BUILTINS = ("echo", "cat", "ls", "mkdir", "cp", "cd")
MADE_BY_MAKE = (".venv",)  # `source .venv/bin/activate` after `make run`/`make setup`


@dataclass(frozen=True)
class Command:
    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.text}"


def documents() -> list[Path]:
    """README.md and every Markdown file under docs/ (found, not listed: new docs are covered as they come)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shell_blocks(path: Path) -> list[list[Command]]:
    """The commands of each runnable shell block: logical lines (backslash continuations joined), comments and blank
    lines left out."""
    blocks, current, previous, language = [], None, "", None
    name = str(path.relative_to(ROOT))
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = FENCE.match(line)
        if fence and current is None and language is None:
            language = fence[2].lower()
            current = [] if language in SHELL and previous.strip() != NORUN else None
            continue
        if fence and language is not None:
            if current:
                blocks.append(current)
            current, language, previous = None, None, line
            continue
        if language is None:
            if line.strip():
                previous = line
            continue
        if current is None:
            continue
        if current and current[-1].text.endswith("\\"):
            last = current.pop()
            current.append(Command(last.file, last.line, last.text[:-1] + " " + line.strip()))
        elif line.strip() and not line.strip().startswith("#"):
            current.append(Command(name, number, line.strip()))
    return blocks


def _blocks() -> list[list[Command]]:
    return [block for path in documents() for block in shell_blocks(path)]


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}


def _scratch(tmp_path: Path) -> Path:
    """A directory that looks like the repository (its files linked) and takes whatever the commands write."""
    work = tmp_path / "repo"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in {".git", ".snakemake", "results", "figures", "data", "report.html", ".venv"}:
            (work / entry.name).symlink_to(entry)
    return work


def _run(args: list[str], cwd: Path, command: Command, timeout: int = 600) -> subprocess.CompletedProcess:
    run = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert run.returncode == 0, f"{command}\n  ran as: {shlex.join(args)}\n{(run.stdout + run.stderr)[-2500:]}"
    return run


def _parsers(parser):
    """A parser and its subcommands' parsers, all the way down."""
    yield parser
    for action in parser._actions:
        if action.choices and isinstance(action.choices, dict):
            for sub in action.choices.values():
                yield from _parsers(sub)


def _parse_ect(args: list[str], command: Command, snapshots: dict[str, tuple[Command, set[str]]]) -> None:
    """``ect``'s own parser must accept the arguments (subcommand, options, choices); it runs nothing. A snapshot
    named in a run directory that an earlier ``ect pretrain``/``tune`` of the block writes must be one it writes
    (``snapshots``: run directory -> (that command, its snapshot files), updated here)."""
    parser = build_parser()
    for each in _parsers(parser):
        each.error = lambda message: pytest.fail(f"{command}\n  ect: {message}")
    try:
        parsed = parser.parse_args(args)
    except SystemExit as exc:  # --help prints and exits 0; errors fail above
        assert exc.code in (0, None), f"{command}\n  ect exited {exc.code}"
        return
    for word in args:
        folder, _, name = word.rpartition("/")
        if re.fullmatch(r"snapshot-\d+\.pt", name) and folder in snapshots:
            writer, written = snapshots[folder]
            assert name in written, (f"{command}\n  {word}: {writer.file}:{writer.line} writes only "
                                     f"{', '.join(sorted(written))} there")
    if parsed.command in ("pretrain", "tune"):
        training = load_run_config(parsed.config, parsed.sets).training
        snapshots[str(parsed.out)] = (command, {snapshot_name(i) for i in {*training.budgets, training.iterations}})


def check(command: Command, work: Path, snapshots: dict | None = None) -> None:
    """Run one documented command in its safe form (module docstring), in the scratch directory ``work``
    (``snapshots``: what the block's earlier training commands write, see _parse_ect)."""
    snapshots = {} if snapshots is None else snapshots
    words = shlex.split(command.text, comments=True)
    if any(w in ("|", "&&", "||", ";") for w in words):
        pytest.fail(f"{command}\n  one command per line, please (no pipes or chains), or mark the block {NORUN}")
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):  # VAR=value prefixes
        words = words[1:]
    if words[:1] == ["nice"]:
        words = words[3:] if words[1:2] == ["-n"] else words[1:]
    program, args = words[0], words[1:]
    if program == "snakemake":
        if "--report" in args:  # needs a finished study: plan the same config instead
            at = args.index("--report")
            args = args[:at] + args[at + 2:]
        if not {"-n", "--dry-run", "--dryrun", "--unlock", "--lint"} & set(args):
            args = ["-n", *args]
        _run([str(BIN / "snakemake"), *args], work, command)
    elif program == "ect":
        _parse_ect(args, command, snapshots)
    elif program == "torchrun":
        assert "-m" in args and args[args.index("-m") + 1] == "ect.cli", f"{command}\n  torchrun of what?"
        _parse_ect(args[args.index("-m") + 2:], command, snapshots)
    elif program == "make":
        _run(["make", "-n", *args], work, command)
    elif program in ("python", "python3"):
        assert "--help" in args, f"{command}\n  a python script is run only with --help; or mark the block {NORUN}"
        _run([sys.executable, *args], work, command, timeout=120)
    elif program in ("source", "."):
        target = args[0]
        assert (ROOT / target).exists() or target.split("/")[0] in MADE_BY_MAKE, f"{command}\n  no {target}"
    elif program in BUILTINS:
        if program == "cd":
            pytest.fail(f"{command}\n  `cd` would change where the rest of the block runs; write paths instead")
        _run(["bash", "-c", command.text], work, command)
    else:
        pytest.fail(f"{command}\n  no safe way to run {program!r} here: give it one in {Path(__file__).name} or mark "
                    f"the block {NORUN}")


@pytest.mark.parametrize("block", _blocks(), ids=lambda block: f"{block[0].file}:{block[0].line}")
def test_documented_commands_run(block, tmp_path):
    work, snapshots = _scratch(tmp_path), {}
    for command in block:
        check(command, work, snapshots)


def test_blocks_are_found_and_norun_is_honoured(tmp_path, monkeypatch):
    assert any(block[0].file == "README.md" for block in _blocks())  # the repository's README has runnable blocks
    doc = tmp_path / "docs" / "new" / "x.md"
    doc.parent.mkdir(parents=True)
    doc.write_text("text\n\n```bash\nmake run   # comment\nsnakemake -n \\\n  --cores 1\n\n# only a comment\n```\n"
                   "<!-- norun -->\n```bash\nsbatch job.sh\n```\n```yaml\nkey: value\n```\n```sh\nls\n```\n")
    (tmp_path / "README.md").write_text("no blocks\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert documents() == [tmp_path / "README.md", doc]  # docs are discovered, not listed
    blocks = shell_blocks(doc)
    assert [[(c.file, c.line, c.text) for c in b] for b in blocks] == [
        [("docs/new/x.md", 4, "make run   # comment"), ("docs/new/x.md", 5, "snakemake -n  --cores 1")],
        [("docs/new/x.md", 18, "ls")]]


def test_a_stale_command_fails_naming_its_line(tmp_path):
    work = _scratch(tmp_path)
    for text in ("ect tune --config digits-tune --out x", "ect sample --sampler 3step --checkpoint a --out b.png",
                 "make nothing-here", "sbatch job.sh"):
        with pytest.raises(BaseException, match=r"docs/x\.md:7: "):
            check(Command("docs/x.md", 7, text), work)
    # A snapshot the block's own training run never writes (digits-tune: budgets 150, 300, 450 and 750).
    snapshots = {}
    check(Command("docs/x.md", 1, "ect tune --config digits-tune --init a.pt --out runs/t"), work, snapshots)
    check(Command("docs/x.md", 2, "ect sample --checkpoint runs/t/snapshot-0000750.pt --sampler 1step --out s.png"),
          work, snapshots)
    stale = r"(?s)docs/x\.md:3: .*docs/x\.md:1 writes only snapshot-0000150\.pt, .*0000750\.pt there"
    with pytest.raises(AssertionError, match=stale):
        check(Command("docs/x.md", 3, "ect sample --checkpoint runs/t/snapshot-0000900.pt --sampler 1step --out s.png"),
              work, snapshots)
