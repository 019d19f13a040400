#!/usr/bin/env bash
# One-shot trainer check on a lent GPU machine (H100/H200); run from anywhere:
#     OUT=/some/dir bash tools/gpu_check.sh
# 1. python: a venv that sees the system's packages (reuses a CUDA torch 2.14.1 if installed,
#    else pip installs the pinned one), `pip install -e .`;
# 2. raw 88x66 shards (pack's format) generated locally, nothing downloaded;
# 3. a short GC7M training through `torchrun --nproc_per_node=1` with bf16 autocast,
#    channels_last and torch.compile: checks the nccl process group and the run outputs,
#    then a SIGTERM + resume on the GPU;
# 4. tools/bench_train.py --device cuda: images/s fed by the real loader from raw shards vs
#    synthetic batches (target >= 20,000 img/s on one H100, loader overhead <= 5 %).
# Everything lands in $OUT (default ./gpu_check_out); the last line of $OUT/summary.json
# style output is printed at the end. Budget: ~10 minutes in all.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$PWD/gpu_check_out}"
WORK="${WORK:-$(mktemp -d /tmp/shardgan_gpu.XXXXXX)}"
mkdir -p "$OUT"
cd "$REPO"
exec > >(tee "$OUT/gpu_check.log") 2>&1
STATUS=()
note() { echo "== $(date -u +%H:%M:%S) $*"; }
check() { local name=$1; shift; if "$@"; then STATUS+=("\"$name\": \"ok\""); else STATUS+=("\"$name\": \"FAILED ($?)\""); fi; }

note "machine"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
head -15 "$OUT/nvidia-smi.txt"
nproc

note "python environment"
# The lent GPU machines reach no package registry: use their python3 (it holds a CUDA torch) and
# the pure-python wheels it lacks (webdataset, braceexpand, torchinfo), carried in .whl/ (see the
# device notes: `pip download --no-deps --only-binary=:all: ... -d .whl webdataset==1.0.2
# braceexpand torchinfo==1.8.0`). Elsewhere, a venv and `pip install -e .`.
if compgen -G ".whl/*.whl" > /dev/null; then
  PY=python3
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl
  export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  VENV="$WORK/venv"
  python3 -m venv --system-site-packages "$VENV" && PY="$VENV/bin/python" || PY=python3
  "$PY" -m pip install --quiet --disable-pip-version-check -e . 2>&1 | tail -5
fi
"$PY" - <<'EOF' | tee "$OUT/versions.txt"
import torch, torchvision
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
print("torchvision", torchvision.__version__)
print("device", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
print("nccl", torch.cuda.nccl.version() if torch.cuda.is_available() else "none")
EOF

note "raw shards (GC7M size 88x66)"
DATA="$WORK/shards"
"$PY" - "$DATA" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tools")
from bench_train import write_dataset
write_dataset(Path(sys.argv[1]), 262144, 2048, 88, 66, "raw")  # 8 shards written, the rest hard links
print("wrote", sys.argv[1])
EOF

RUNS="$WORK/runs"
TRAIN=(--config configs/gc7m.toml "data.shards=$DATA" "run.root=$RUNS" data.batch_size=256 data.num_workers=8
       train.compile=true train.channels_last=true train.precision=bf16 train.log_every_steps=20
       train.sample_every_steps=100 checkpoint.every_steps=100 checkpoint.keep_last=2)

train_short() {
  note "torchrun --nproc_per_node=1: 300 GC7M steps, bf16 + channels_last + compile"
  timeout 240 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m shardgan.train "${TRAIN[@]}" \
      run.name=gc7m train.max_steps=300 2> "$OUT/train_gc7m.stderr"
  local rc=$?
  tr '\r' '\n' < "$OUT/train_gc7m.stderr" | grep -v 'img/s' | tail -20
  grep -q "process group backend nccl" "$RUNS/gc7m/train.log" || { echo "no nccl process group"; return 9; }
  return $rc
}
check train_gc7m_torchrun_nccl train_short
mkdir -p "$OUT/run_gc7m"
cp -r "$RUNS/gc7m/"{config.toml,architecture.txt,train.log,metrics.jsonl,train_batch.png,loss_curve.png,samples} "$OUT/run_gc7m/" 2>/dev/null
tail -3 "$RUNS/gc7m/metrics.jsonl" 2>/dev/null

sigterm_resume() {
  note "SIGTERM at a step boundary on the GPU, then resume to 200 steps"
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m shardgan.train "${TRAIN[@]}" \
      run.name=sigterm train.max_steps=100000 train.compile=false 2> "$OUT/sigterm.stderr" &
  local pid=$!
  for _ in $(seq 1 600); do [ -f "$RUNS/sigterm/checkpoints/step_00000100.json" ] && break; sleep 0.2; done
  pkill -TERM -P "$pid" -f shardgan.train  # the worker (child of this torchrun) gets the signal
  wait "$pid"; local rc=$?
  grep -h "stopped by signal" "$RUNS/sigterm/train.log" || return 8
  timeout 180 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m shardgan.train "${TRAIN[@]}" \
      run.name=sigterm train.max_steps=200 train.compile=false 2>> "$OUT/sigterm.stderr" || return $?
  grep -h "resumed from" "$RUNS/sigterm/train.log" || return 7
  return $rc
}
check sigterm_checkpoint_resume_gpu sigterm_resume

note "bench_train.py --device cuda (real loader from raw shards vs synthetic batches)"
for batch in 256 1024; do
  timeout 240 "$PY" tools/bench_train.py --device cuda --shards "$DATA" --batch-size "$batch" --workers 8 > "$OUT/bench_train_gpu_b$batch.txt" 2>&1
  echo "batch $batch: rc=$?"; tail -6 "$OUT/bench_train_gpu_b$batch.txt"
done
check bench_gpu_b256 grep -q '^{' "$OUT/bench_train_gpu_b256.txt"

note "summary"
{
  echo "{"; printf '  %s,\n' "${STATUS[@]}"
  b256=$(grep '^{' "$OUT/bench_train_gpu_b256.txt" | tail -1); b1024=$(grep '^{' "$OUT/bench_train_gpu_b1024.txt" | tail -1)
  echo "  \"bench_b256\": ${b256:-null},"
  echo "  \"bench_b1024\": ${b1024:-null}"
  echo "}"
} > "$OUT/summary.json"
cat "$OUT/summary.json"
rm -rf "$WORK/shards" "$RUNS"
