#!/usr/bin/env bash
# Every GPU measurement of bench/README.md in one call, results appended to bench/results/gpu-*.jsonl.
#
#   bench/gpu_suite.sh OFFICIAL_DIR [PART] [INCEPTION_WEIGHTS]
#
# OFFICIAL_DIR: a checkout of https://github.com/locuslab/ect (main branch), fetched at run time and never
#   committed here (git clone https://github.com/locuslab/ect; machines without internet get a copied checkout).
# PART: all (default), train (official vs ours, EDM2-S, ~6 min on an H100) or trainer (real `ect tune` vs the
#   bench, evaluation throughput, ~4 min), so that a 10-minute limit per call can be met in two calls.
# INCEPTION_WEIGHTS: torch-fidelity's weights-inception-2015-12-05-6726825d.pth for machines without
#   internet; without it (and offline) the evaluation bench times the sampling only.
# Each step has its own timeout so that one slow step cannot eat the others' time.
set -uo pipefail
OFFICIAL=${1:?usage: bench/gpu_suite.sh OFFICIAL_DIR [all|train|trainer] [INCEPTION_WEIGHTS]}
PART=${2:-all}
WEIGHTS=${3:-}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
R=bench/results
mkdir -p "$R"
TP="python bench/train_throughput.py --device cuda --batch 128 --steps 20 --repeats 2 --out $R/gpu-train.jsonl"
run() { echo "== $*"; timeout "$@" || echo "!! failed or timed out: $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$R/gpu-device.txt"

if [[ $PART == all || $PART == train ]]; then
  # DDPM++ CIFAR-10 at batch 128: the official code in its three settings next to ours in the same numerics.
  run 90 $TP --preset ddpmpp-cifar10 --precision fp32 --official "$OFFICIAL" --official-precision fp32
  run 60 $TP --preset ddpmpp-cifar10 --precision tf32 --official "$OFFICIAL" --official-precision tf32
  run 60 $TP --preset ddpmpp-cifar10 --precision bf16 --official "$OFFICIAL" --official-precision fp16
  # The fast mode: bf16 + torch.compile (with and without channels_last).
  run 150 $TP --preset ddpmpp-cifar10 --precision bf16 --compile
  run 150 $TP --preset ddpmpp-cifar10 --precision bf16 --compile --channels-last
  # EDM2-S (ImageNet 64): official numerics (tf32) and the fast mode.
  run 60 $TP --preset edm2-img64-s --precision tf32 --steps 10
  run 180 $TP --preset edm2-img64-s --precision bf16 --compile --steps 10
fi

if [[ $PART == all || $PART == trainer ]]; then
  # The real trainer (`ect tune`) on a synthetic 32×32 image folder vs the bench on the same settings.
  W=$(mktemp -d)
  python - "$W/images" <<'EOF'
import sys, pathlib, numpy as np
from PIL import Image
root = pathlib.Path(sys.argv[1]); root.mkdir(parents=True)
rng = np.random.default_rng(0)
for i in range(2048):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i:05d}.png")
EOF
  COMMON=(--config cifar10-tune --set data.name=imagefolder --set data.data_dir="$W/images"
          --set sampling.grid_size=0 --set training.budgets=[] --set training.checkpoint_every=100000 --no-progress)
  run 120 python -m ect.cli pretrain "${COMMON[@]}" --out "$W/pre" --set training.iterations=1 --set training.log_every=1
  for mode in "fp32 false" "bf16 true"; do
    set -- $mode
    run 240 python -m ect.cli tune "${COMMON[@]}" --init "$W/pre/snapshot-0000001.pt" --out "$W/tune-$1" \
      --set training.iterations=300 --set training.log_every=50 --set training.precision="$1" --set training.compile="$2"
    python - "$W/tune-$1/log.jsonl" "$1" "$2" "$R/gpu-trainer.jsonl" <<'EOF'
import json, statistics, sys, torch
log, prec, comp, out = sys.argv[1:]
rows = [json.loads(line) for line in open(log)][1:]  # the first interval holds cuDNN tuning / compilation
rec = {"implementation": "ours, ect tune", "preset": "ddpmpp-cifar10", "batch": 128, "precision": prec,
       "compile": comp == "true", "device": torch.cuda.get_device_name(),
       "img_per_s": statistics.median(r["img_per_s"] for r in rows), "intervals": [r["img_per_s"] for r in rows],
       "numerics": rows[-1]["numerics"]}
print(json.dumps(rec)); open(out, "a").write(json.dumps(rec) + "\n")
EOF
    C=(); [[ $2 == true ]] && C=(--compile)
    run 150 $TP --preset ddpmpp-cifar10 --precision "$1" "${C[@]}" --note "bench next to ect tune"
  done
  rm -rf "$W"
  # Evaluation: 50,000 2-step CIFAR-10 samples plus their Inception features (target: ≤ 2 min on an H100).
  F=(--features none); [[ -n $WEIGHTS ]] && F=(--feature-weights "$WEIGHTS")
  for prec in fp32 bf16; do
    run 200 python bench/eval_throughput.py --preset ddpmpp-cifar10 --num 50000 --batch 1000 --precision $prec \
      "${F[@]}" --out "$R/gpu-eval.jsonl"
  done
fi
echo "results in $R/gpu-*.jsonl"
