#!/usr/bin/env bash
# Every GPU figure of issue 22 in one run on a GPU machine, from the repository root:
#
#     bash benchmarks/gpu_check.sh                 # on the GPU machine (DEVICE=cuda)
#     TOY=1 DEVICE=cpu bash benchmarks/gpu_check.sh   # the same steps at toy sizes on a CPU
#
# On a machine without the project's venv (a GPU machine's own python3 with torch):
#     PY=python3 TESTS="python3 -m pytest -q" bash benchmarks/gpu_check.sh
# STEP_TIMEOUT (seconds, default none) stops a step that runs longer and goes on with the next.
#
# Writes OUT (default gpu_check/): precision.txt, mixing.txt, the runs of step 3 and their
# format check (formats.txt), tests.txt, and summary.txt (the tail of each).  A step that fails
# is recorded and the next one still runs.
set -u
PY=${PY:-.venv/bin/python}
DEV=${DEVICE:-cuda}
OUT=${OUT:-gpu_check}
TOY=${TOY:-0}
TESTS=${TESTS:-make test}
STEP_TIMEOUT=${STEP_TIMEOUT:-0}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
step() {   # step NAME FILE COMMAND...: run, keep its output, record the exit status
    local name=$1 file=$2; shift 2
    local t0=$SECONDS
    timeout "$STEP_TIMEOUT" "$@" > "$OUT/$file" 2>&1
    local rc=$?
    echo "== $name: exit $rc, $((SECONDS - t0)) s ($file)" | tee -a "$OUT/summary.txt"
    tail -n 25 "$OUT/$file" >> "$OUT/summary.txt"
}
P="$PY -m posesynth"
if [ "$TOY" = 1 ]; then
    PREC="--iters 1 --posenet-size 64 --posenet-batch 2 --gan-size 64 --gan-ngf 8 --gan-batch 2 --whole-size 64 --whole-batch 2"
    MIX="--size 64 --ngf 8 --batch 2 --iters 1"
    N=16; SIZE=64; EPOCH="--steps-per-epoch 2 --batch-size 2"; GSTEPS=2; GNGF=8
else
    PREC="--iters 5"   # 10 iterations took 3.5 minutes of the first H200 run
    MIX="--size 256 --ngf 64"
    # steps 1-3 took about 8 minutes on one H200 with 16 CPU cores (bench_precision about 3.5 of
    # them; the warp renders on the CPU, in the main process for train-posenet); the tests come after
    N=256; SIZE=256; EPOCH="--steps-per-epoch 20 --batch-size 16"; GSTEPS=200; GNGF=32
fi
# 1. mixed precision: pose network, GAN iteration, the whole augmented step, generation
step "bench_precision" precision.txt $PY benchmarks/bench_precision.py --device "$DEV" $PREC
# 2. the mixed step against the plain step
step "bench_mixing" mixing.txt $PY benchmarks/bench_mixing.py --device "$DEV" $MIX
# 3. training runs on the device: 2 epochs, then --resume for a third
D=$OUT/data
[ -f "$D/train/annotations.json" ] || $P make-data --out "$D/train" --num $N --seed 0 --size $SIZE --pose-range narrow > /dev/null
[ -f "$D/val/annotations.json" ] || $P make-data --out "$D/val" --num $((N / 4)) --seed 1 --size $SIZE --pose-range wide > /dev/null
COMMON="--data $D/train --val $D/val --size $SIZE --pretrained none --device $DEV $EPOCH"
step "refiner" refine.txt $P train-gan --mode refine --data "$D/train" --out "$OUT/refine" --ngf $GNGF \
    --steps $GSTEPS --batch-size 8 --vgg off --device "$DEV" --workers $([ "$TOY" = 1 ] && echo 0 || echo 8)
for r in warp refine; do
    extra=""; [ $r = refine ] && extra="--gan $OUT/refine"
    step "train-posenet --renderer $r (2 epochs)" "pose_$r.txt" $P train-posenet $COMMON --renderer $r $extra \
        --epochs 2 --out "$OUT/pose_$r"
    step "train-posenet --renderer $r --resume (epoch 3)" "pose_${r}_resume.txt" $P train-posenet \
        --out "$OUT/pose_$r" --resume --epochs 3
done
step "torchrun --nproc_per_node=1 train-posenet (CUDA; one process makes no process group, so no NCCL)" pose_ddp.txt $PY -m torch.distributed.run \
    --standalone --nproc_per_node=1 -m posesynth train-posenet $COMMON --epochs 2 --out "$OUT/pose_ddp"
# the runs' files have the format of a CPU run's: safetensors + JSON pairs, history.csv, config.yaml
step "formats" formats.txt $PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from safetensors.torch import load_file
out = Path(sys.argv[1])
bad = 0
for run in ("pose_warp", "pose_refine", "pose_ddp", "refine"):
    d = out / run
    for name in ("config.yaml", "checkpoints/latest.json", "checkpoints/latest.safetensors"):
        if not (d / name).exists():
            print(f"{run}: no {name}"); bad += 1
    if (d / "checkpoints/latest.safetensors").exists():
        t = load_file(str(d / "checkpoints/latest.safetensors"))   # loads on the CPU: no device tensors saved
        meta = json.loads((d / "checkpoints/latest.json").read_text())
        print(f"{run}: {len(t)} tensors, all on cpu: {all(v.device.type == 'cpu' for v in t.values())}, "
              f"step/epoch {meta.get('epoch', meta.get('step'))}")
    if run.startswith("pose") and (d / "history.csv").exists():
        rows = (d / "history.csv").read_text().strip().splitlines()
        print(f"{run}: history.csv {len(rows) - 1} epochs, columns {rows[0][:80]}...")
sys.exit(1 if bad else 0)
EOF
# 4. the test suite on this machine
if [ "$TOY" != 1 ]; then step "$TESTS" tests.txt $TESTS; fi
echo "figures in $OUT/summary.txt"
