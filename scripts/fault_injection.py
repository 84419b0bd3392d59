"""Slow reliability suite: inject faults into real runs and feed malformed calls to the CLI; print counts.

    python scripts/fault_injection.py [--only malformed|faults] [--work DIR]

Faults (each on tiny digits runs; "survived" = the run resumed or refused cleanly and its final weights equal
an uninterrupted run's, bit for bit, or the study's metrics.csv equals an uninterrupted study's):
kill -9 mid-tuning (twice), SIGTERM and SIGUSR1 (checkpoint, exit 75, resume), disk full during a checkpoint
write (a 4 MiB tmpfs when we may mount one, else a read-only run directory), NaN injected by the learning rate
and into a checkpoint (bit rot), a truncated and a bit-flipped checkpoint (fallback to the previous generation),
a damaged snapshot (refused by name), two writers on one run directory, snakemake killed mid-study (recovery
with the README's command).

Malformed inputs: every `ect` subcommand with bad values, files, paths and devices; "rejected cleanly" = a
non-zero exit, at most one line on stderr naming the problem, no traceback, and nothing written.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ECT = [sys.executable, "-m", "ect.cli"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
SMALL = ["--set", "network.preset=tiny-s", "--set", "training.batch_size=16", "--set", "sampling.grid_size=0",
         "--set", "training.log_every=5", "--set", "training.budgets=[]", "--no-progress"]


def ect(*args: object, check: bool = False, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run([*ECT, *map(str, args)], env=ENV, capture_output=True, text=True, **kw)
    if check and result.returncode:
        raise RuntimeError(f"ect {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def pretrain(out: Path, iterations: int = 20, *extra: str) -> Path:
    ect("pretrain", "--config", "digits-pretrain", "--out", out, *SMALL, "--set", f"training.iterations={iterations}",
        "--set", "training.checkpoint_every=10", *extra, check=True)
    return out / f"snapshot-{iterations:07d}.pt"


def tune_args(init: Path, out: Path, iterations: int = 40) -> list[object]:
    return ["tune", "--config", "digits-tune", "--init", init, "--out", out, *SMALL,
            "--set", f"training.iterations={iterations}", "--set", "training.checkpoint_every=10",
            "--set", "ect.stage_length=20"]


def weights(path: Path) -> str:
    data = torch.load(path, map_location="cpu", weights_only=True)
    digest = hashlib.sha256()
    for name in sorted(data["net"]):
        digest.update(data["net"][name].numpy().tobytes())
    for name in sorted(data["ema"]):
        digest.update(data["ema"][name].numpy().tobytes())
    return digest.hexdigest()


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None or time.time() > end:
            raise RuntimeError(f"{path} never appeared")
        time.sleep(0.05)


# --- Faults ----------------------------------------------------------------------------------------------------


def faults(work: Path) -> tuple[int, int]:
    init = pretrain(work / "pre")
    reference = work / "ref"
    ect(*tune_args(init, reference), check=True)
    good = weights(reference / "checkpoint.pt")
    results: list[tuple[str, bool, str]] = []

    def record(name: str, ok: bool, note: str = "") -> None:
        results.append((name, ok, note))
        print(f"  {'survived' if ok else 'LOST    '}  {name}  {note}", flush=True)

    def finish(run: Path) -> bool:
        done = ect(*tune_args(init, run))
        return done.returncode == 0 and weights(run / "checkpoint.pt") == good

    # kill -9 twice mid-tuning, then resume.
    run = work / "kill9"
    for _ in range(2):
        proc = subprocess.Popen([*ECT, *map(str, tune_args(init, run))], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        wait_for(run / "checkpoint.pt", proc)
        time.sleep(0.5)
        proc.kill()
        proc.wait()
    record("kill -9 twice mid-tuning", finish(run))

    # SIGTERM / SIGUSR1: checkpoint at the next iteration, exit 75, resume.
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        run = work / f"signal-{sig.name}"
        proc = subprocess.Popen([*ECT, *map(str, tune_args(init, run))], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        wait_for(run / "log.jsonl", proc)
        proc.send_signal(sig)
        _, err = proc.communicate()
        it = torch.load(run / "checkpoint.pt", weights_only=True)["progress"]["iteration"]
        ok = proc.returncode == 75 and "stopped by" in err and it % 10 != 0 and finish(run)
        record(f"{sig.name} mid-tuning", ok, f"exit {proc.returncode}, checkpoint at iteration {it}")

    # Disk full during a checkpoint write: a tmpfs with room for the first checkpoint but not the second one next
    # to it (the previous generation is kept), if we may mount one; else a read-only run directory.
    run = work / "diskfull"
    run.mkdir()
    size = (reference / "checkpoint.pt").stat().st_size * 5 // 2 + 65536
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(run)]
    if subprocess.run(mount, capture_output=True).returncode == 0:
        failed = ect(*tune_args(init, run))
        saved = torch.load(run / "checkpoint.pt", weights_only=True)["progress"]["iteration"]
        leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
        clean = failed.returncode != 0 and "Traceback" not in failed.stderr and not leftovers
        kept = work / "diskfull-kept"
        shutil.copytree(run, kept)
        subprocess.run(["umount", str(run)], check=True)
        run.rmdir()
        kept.rename(run)
        record(f"disk full ({size // 1024} KiB tmpfs)", clean and finish(run),
               f"exit {failed.returncode}, kept iteration {saved}: {failed.stderr.strip().splitlines()[-1][:80]}")
    else:
        ect(*tune_args(init, run, 20), check=True)
        run.chmod(0o555)
        failed = ect(*tune_args(init, run))
        run.chmod(0o755)
        clean = failed.returncode != 0 and "Traceback" not in failed.stderr
        record("read-only run directory", clean and finish(run),
               f"exit {failed.returncode}: {failed.stderr.strip().splitlines()[-1][:90]}")

    # Divergence: lr 1e3 must stop with a named iteration, exit non-zero, no snapshot from the bad state.
    run = work / "nan-lr"
    bad = ect(*tune_args(init, run), "--set", "optimizer.lr=1e3", "--set", "training.log_every=1")
    snaps = sorted(p.name for p in run.glob("snapshot-*.pt"))
    ok = bad.returncode == 2 and "non-finite loss at iteration" in bad.stderr and not snaps
    record("divergence (lr 1e3)", ok, bad.stderr.strip().splitlines()[-1][:100])

    # Damaged latest checkpoints: NaN written into it, a truncation, a bit flip -> previous generation, same result.
    for damage in ("nan", "truncate", "bitflip"):
        run = work / f"damaged-{damage}"
        ect(*tune_args(init, run, 30), check=True)
        path = run / "checkpoint.pt"
        if damage == "nan":  # a NaN weight with a matching digest: only the finite check can see it
            from ect.checkpoint import save_checkpoint

            data = torch.load(path, weights_only=True)
            data.pop("digest")
            next(iter(data["net"].values())).view(-1)[0] = float("nan")
            save_checkpoint(path, data)
        elif damage == "truncate":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        else:
            raw = bytearray(path.read_bytes())
            raw[len(raw) * 2 // 3] ^= 0x40
            path.write_bytes(bytes(raw))
        resumed = ect(*tune_args(init, run))
        ok = resumed.returncode == 0 and "resuming from" in resumed.stderr and weights(path) == good
        record(f"damaged checkpoint.pt ({damage})", ok)

    # A damaged snapshot is refused by name by evaluate and sample.
    snap = work / "bad-snapshot.pt"
    raw = bytearray((reference / "snapshot-0000040.pt").read_bytes())
    raw[len(raw) * 2 // 3] ^= 0x01
    snap.write_bytes(bytes(raw))
    refused = ect("sample", "--checkpoint", snap, "--sampler", "1step", "--num", "4", "--out", work / "s.npz")
    record("damaged snapshot", refused.returncode == 2 and str(snap) in refused.stderr
           and "damaged" in refused.stderr and not (work / "s.npz").exists())

    # Two writers: the second fails at once naming the first; the first finishes unharmed.
    run = work / "two-writers"
    first = subprocess.Popen([*ECT, *map(str, tune_args(init, run))], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    wait_for(run / "log.jsonl", first)
    first.send_signal(signal.SIGSTOP)  # a writer that is still busy (it holds the lock while stopped)
    second = ect(*tune_args(init, run))
    first.send_signal(signal.SIGCONT)
    first.wait()
    ok = second.returncode == 2 and f"pid {first.pid}" in second.stderr and first.returncode == 0
    record("two writers on one run directory", ok and weights(run / "checkpoint.pt") == good,
           second.stderr.strip()[:110])

    results.append(killed_snakemake(work))
    print(f"  {'survived' if results[-1][1] else 'LOST    '}  {results[-1][0]}  {results[-1][2]}")
    return len(results), sum(ok for _, ok, _ in results)


def killed_snakemake(work: Path) -> tuple[str, bool, str]:
    """Kill snakemake (-9, with its jobs) mid-study on the smoke config; `make run`'s commands must finish it with
    the metrics.csv of an uninterrupted study."""
    env = {**ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    copies = {}
    for name in ("full", "killed"):
        copy = work / f"study-{name}"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", ".venv", "results", ".snakemake",
                                                                    "__pycache__", ".cache*", "figures"))
        copies[name] = copy
    snake = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", "--configfile",
             "workflow/configs/smoke.yaml", "--quiet"]
    subprocess.run([*snake], cwd=copies["full"], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(snake, cwd=copies["killed"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    tune_dir = copies["killed"] / "results" / "smoke"
    end = time.time() + 600
    while not list(tune_dir.glob("**/checkpoint.pt")):
        if time.time() > end or proc.poll() is not None:
            break
        time.sleep(0.2)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # The README's recovery: `make run` = unlock, then rerun with --rerun-incomplete.
    subprocess.run([*snake[:1], "--unlock", *snake[3:5]], cwd=copies["killed"], env=env, capture_output=True)
    rerun = subprocess.run([*snake, "--rerun-incomplete"], cwd=copies["killed"], env=env, capture_output=True,
                           text=True)
    a, b = (copies[n] / "results" / "smoke" / "metrics.csv" for n in ("full", "killed"))
    same = rerun.returncode == 0 and b.exists() and a.read_bytes() == b.read_bytes()
    return "snakemake killed (-9) mid-study", same, f"rerun exit {rerun.returncode}"


# --- Malformed inputs ------------------------------------------------------------------------------------------


def malformed(work: Path) -> tuple[int, int]:
    init = pretrain(work / "pre-m", 10)
    run = work / "run-m"
    (work / "a-file").write_text("x")
    (work / "garbage.pt").write_bytes(os.urandom(1000))
    (work / "empty.csv").write_text("")
    (work / "bad.yaml").write_text("training: [1,\n")
    (work / "list.yaml").write_text("- 1\n- 2\n")
    (work / "bad.json").write_text("{not json")
    weights_file = work / "inception-shaped.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, weights_file)
    train = ["pretrain", "--config", "digits-pretrain", "--out", run, "--no-progress"]
    tune = ["tune", "--config", "digits-tune", "--init", init, "--out", run, "--no-progress"]
    sample = ["sample", "--checkpoint", init, "--sampler", "heun"]
    evaluate = ["evaluate", "--checkpoint", init, "--sampler", "heun", "--metric", "fd_digits"]
    calls: list[list[object]] = [
        [*train, "--set", "ect.q=[1,"],
        [*train, "--set", "training.iterations.x=1"],
        [*train, "--set", "training.iterations=5", "--set", "training.iterations.x=1"],
        [*train, "--set", "optimizer.lr=nan"],
        [*train, "--set", "optimizer.lr=.inf"],
        [*train, "--set", "optimizer.lr=-1"],
        [*train, "--set", "optimizer.betas=[0.9]"],
        [*train, "--set", "optimizer.eps=1e400"],
        [*train, "--set", "ema.beta=1e999999"],
        [*train, "--set", f"training.seed={2**70}"],
        [*train, "--set", "training.seed=-1"],
        [*train, "--set", "training.iterations=0"],
        [*train, "--set", "training.iterations=1.5"],
        [*train, "--set", "training.budgets=[5000]"],
        [*train, "--set", "training.device=cuda"],
        [*train, "--set", "training.device=tpu"],
        [*train, "--set", "training.device=cuda:x"],
        [*train, "--set", "network.preset=huge"],
        [*train, "--set", "data.name=mnist"],
        [*train, "--set", "noequals"],
        [*train, "--set", ".x=1"],
        [*train, "--set", "training=5"],
        [*train, "--set", "training.batch_size=100", "--set", "training.batch_per_device=7"],
        [*train, "--set", "sampling.t_mid=[nan]"],
        [*train, "--set", "sampling.t_max=0.1"],
        [*train, "--set", "network.dropout=2"],
        [*train, "--config", work / "bad.yaml"],
        [*train, "--config", work / "list.yaml"],
        [*train, "--config", "no-such-preset"],
        ["pretrain", "--config", "digits-pretrain", "--out", work / "a-file" / "run", "--no-progress"],
        ["tune", "--config", "digits-tune", "--out", run, "--no-progress"],
        [*tune[:4], work / "garbage.pt", *tune[5:]],
        [*tune[:4], work / "missing.pt", *tune[5:]],
        [*tune[:4], work, *tune[5:]],
        [*tune, "--set", "network.preset=tiny-m"],
        [*sample, "--num", "0", "--out", work / "x.npz"],
        [*sample, "--num", "4", "--out", work / "x.txt"],
        [*sample, "--num", "4", "--seed", str(2**70), "--out", work / "x.npz"],
        [*sample, "--num", "4", "--seed", "-5", "--out", work / "x.npz"],
        [*sample, "--num", "4", "--device", "cuda", "--out", work / "x.npz"],
        [*sample, "--num", "4", "--device", "gpu0", "--out", work / "x.npz"],
        [*sample, "--num", "4", "--batch", "0", "--out", work / "x.npz"],
        [*sample, "--num", "4", "--out", work / "a-file" / "x.npz"],
        ["sample", "--checkpoint", work / "garbage.pt", "--sampler", "1step", "--out", work / "x.npz"],
        ["sample", "--checkpoint", init, "--sampler", "1step", "--t-mid", "nan", "--out", work / "x.npz"],
        ["sample", "--checkpoint", init, "--sampler", "heun", "--t-max", "20", "--out", work / "x.npz"],
        ["evaluate", "--checkpoint", init, "--sampler", "1step", "--metric", "fd_digits", "--t-max", "-1",
         "--out", work / "e.json"],
        [*evaluate, "--device", "cuda:3", "--out", work / "e.json"],
        [*evaluate, "--seed", str(2**70), "--out", work / "e.json"],
        [*evaluate, "--num", "1", "--out", work / "e.json"],
        [*evaluate, "--out", work / "a-file" / "e.json"],
        [*evaluate, "--feature-weights", work / "missing.pt", "--out", work / "e.json"],
        [*evaluate, "--feature-weights", work / "garbage.pt", "--out", work / "e.json"],
        ["evaluate", "--checkpoint", init, "--sampler", "2step", "--metric", "fd_digits", "--out", work / "e.json"],
        ["evaluate", "--checkpoint", init, "--sampler", "heun", "--metric", "fid", "--feature-weights",
         weights_file, "--data-dir", work / "no-cifar", "--out", work / "e.json"],
        ["import", "--source", work / "garbage.pt", "--out", work / "i.pt"],
        ["import", "--source", "no-such-official-name", "--out", work / "i.pt"],
        ["import", "--source", work / "missing.pkl", "--out", work / "i.pt"],
        ["prepare", "--dataset", "mnist", "--out", work / "p.json"],
        ["prepare", "--dataset", "digits", "--metric", "fid", "--out", work / "p.json"],
        ["prepare", "--dataset", "digits", "--metric", "nope", "--out", work / "p.json"],
        ["prepare", "--dataset", "digits", "--device", "cuda", "--out", work / "p.json"],
        ["collect", "--experiment", "x", "--eval", "m", "base", work / "missing.json", "--out", work / "c.csv"],
        ["collect", "--experiment", "x", "--eval", "m", "base", work / "bad.json", "--out", work / "c.csv"],
        ["collect", "--experiment", "x", "--out", work / "c.csv"],
        ["fit", "--metrics", work / "missing.csv", "--out", work / "f.csv"],
        ["fit", "--metrics", work / "empty.csv", "--out", work / "f.csv"],
        ["fit", "--metrics", work / "bad.json", "--out", work / "f.csv"],
        ["fit", "--metrics", work / "missing.csv", "--confidence", "1.5", "--out", work / "f.csv"],
        ["table", "main", "--metrics", work / "missing.csv", "--out", work / "t"],
        ["table", "main", "--metrics", work / "empty.csv", "--out", work / "t"],
        ["table", "scaling", "--scaling", work / "bad.json", "--out", work / "t"],
        ["table", "ablation", "--metrics", work / "bad.json", "--axis", "q", "--base", "2", "--model", "m",
         "--out", work / "t"],
        ["figure", "scaling", "--metrics", work / "missing.csv", "--scaling", work / "missing.csv", "--metric",
         "fid", "--out", work / "g"],
        ["figure", "loss", "--log", "m", "ect", work / "missing.jsonl", "--out", work / "g"],
        ["figure", "loss", "--log", "m", "ect", work / "bad.json", "--out", work / "g"],
        ["figure", "samples", "--samples", "m", "1step", work / "garbage.pt", "--out", work / "g"],
    ]
    clean = 0
    for call in calls:
        before = {p for p in work.rglob("*")}
        result = ect(*call)
        new = {p for p in work.rglob("*")} - before
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
        errors = [ln for ln in lines if ": error:" in ln]
        ok = result.returncode != 0 and "Traceback" not in result.stderr and len(errors) == 1 and not new
        clean += ok
        if not ok:
            print(f"  NOT CLEAN (exit {result.returncode}, {len(lines)} lines, new {sorted(map(str, new))[:2]}): "
                  f"ect {' '.join(map(str, call))}\n    {result.stderr.strip()[-300:]}", flush=True)
    return len(calls), clean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["malformed", "faults"])
    parser.add_argument("--work", type=Path, help="scratch directory (default: a new temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="ect-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    lines, perfect = [], True
    if args.only != "faults":
        (work / "malformed").mkdir(exist_ok=True)
        tried, rejected = malformed(work / "malformed")
        lines.append(f"malformed inputs: {tried} tried, {rejected} rejected cleanly")
        perfect &= tried == rejected
    if args.only != "malformed":
        (work / "faults").mkdir(exist_ok=True)
        injected, survived = faults(work / "faults")
        lines.append(f"faults: {injected} injected, {survived} survived with nothing lost")
        perfect &= injected == survived
    print("\n".join(lines))
    return 0 if perfect else 1


if __name__ == "__main__":
    sys.exit(main())
