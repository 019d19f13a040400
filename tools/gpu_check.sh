#!/usr/bin/env bash
# One command for a lent GPU machine (one H200): ends within 8 minutes, writes one tarball,
# $OUT/gpu_check.tar.gz, and prints its summary.json last.
#     OUT=/some/dir bash tools/gpu_check.sh            # on the GPU machine
#     OUT=/tmp/x bash tools/gpu_check.sh --cpu-dry-run  # every part, tiny sizes, on the CPU (a test runs it)
# Parts, each under its own time limit (seconds on the GPU, 470 in all; a part over it is marked
# failed and the check goes on):
#   1 versions    45  torch/CUDA/nccl/bf16, which torchrun flags exist, compile == eager; pytest -m gpu
#   2 syncs       35  CUDA sync debug mode over 10 ordinary steps of the real step and hooks
#                     (expect 0 warnings), then a profile: kernels per step, GPU busy %
#   3 speed      190  img/s of GC7M and 3CK2 at batch 256 and 512 through the real loop and hooks:
#                     eager vs compile (at 256), channels_last on and off (at 256), bf16; recompiles counted
#   4 loop        30  the real loop over an 8-batch split (an epoch end every 8 steps)
#   5 exact       80  two ranks on one GPU over gloo with CUDA tensors: straight vs SIGTERM +
#                     resume, bit for bit, deterministic and default mode, and the cost of the former
#   6 swd         20  SWD's reference and one evaluation at 512 and 2,048 images on the GPU
#   7 loader      20  bench_loader: raw/jpg/png samples/s with 1, 4, 8 and 16 workers
#   8 pack        20  bench_pack: pack scaling with 1, 2, 4, 8 and 16 workers
# Python: the machine's python3 (it holds a CUDA torch) plus the wheels it lacks, carried in
# .whl/ (webdataset, braceexpand, simplejpeg, torchinfo: `pip download --no-deps --only-binary=:all:
# --python-version 3.12 -d .whl ...`); $PYTHON overrides it (the dry run uses the test's).
set -uo pipefail

DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$PWD/gpu_check_out}"
WORK="$(mktemp -d /tmp/shardgan_gpu.XXXXXX)"
RESULTS="$OUT/gpu_check"
mkdir -p "$RESULTS"
cd "$REPO"
exec > >(tee "$RESULTS/gpu_check.log") 2>&1
export PY="${PYTHON:-python3}" WORK
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl
  export PYTHONPATH="$WORK/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" PYTHONUNBUFFERED=1
DRYFLAG=(); [ "$DRY" = 1 ] && DRYFLAG=(--cpu-dry-run)
STATUS=()

part() {  # part NAME SECONDS COMMAND...: run it under its limit, its output in $RESULTS/NAME.txt
  local name=$1 limit=$2; shift 2
  echo "== $(date -u +%H:%M:%S) $name (limit ${limit} s)"
  if declare -F "$1" > /dev/null; then  # a function of this script: run in a bash of its own, under the limit
    timeout -k 10 "$limit" bash -c "$(declare -f "$1"); $1" > "$RESULTS/$name.txt" 2>&1
  else
    timeout -k 10 "$limit" "$@" > "$RESULTS/$name.txt" 2>&1
  fi
  local rc=$?
  if [ "$rc" = 0 ]; then STATUS+=("\"$name\": \"ok\""); else STATUS+=("\"$name\": \"failed (rc $rc)\""); fi
  tail -4 "$RESULTS/$name.txt"
}

versions() {
  nvidia-smi 2>/dev/null | head -15
  "$PY" - <<'PYEOF'
import json, subprocess, sys
import torch
cuda = torch.cuda.is_available()
help_text = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--help"], capture_output=True, text=True).stdout
found = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda, "nproc": __import__("os").cpu_count(),
         "device": torch.cuda.get_device_name() if cuda else "cpu", "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
         "bf16": torch.cuda.is_bf16_supported() if cuda else None,
         "torchrun_flags": {f: f in help_text for f in ("--signals_to_handle", "--shutdown_timeout", "--local-ranks-filter")}}
if cuda:  # compile correctness: the GC7M generator compiled against eager, fp32
    from shardgan.configfile import load_config
    from shardgan.models import build_models
    g = build_models(load_config("configs/gc7m.toml").model, 0)[0].cuda().eval()
    z = torch.randn(64, 100, 1, 1, device="cuda")
    with torch.no_grad():
        found["compile_max_abs_diff"] = float((torch.compile(g)(z) - g(z)).abs().max())
print(json.dumps({"versions": found}))
PYEOF
}

part versions $((DRY ? 120 : 45)) versions
part pytest_gpu $((DRY ? 180 : 30)) "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_state.py tests/test_train.py tests/test_loader.py
for name in syncs speed loop exact swd; do
  case $name in syncs) limit=35 ;; speed) limit=190 ;; loop) limit=30 ;; exact) limit=80 ;; swd) limit=20 ;; esac
  [ "$DRY" = 1 ] && limit=300  # a shared CPU is slower than the GPU at everything
  part "$name" "$limit" "$PY" tools/gpu_check.py "$name" --work "$WORK" "${DRYFLAG[@]}"
done
if [ "$DRY" = 1 ]; then
  part loader 300 "$PY" tools/bench_loader.py --frames 64 --rounds 1 --workers 1 --batch-size 16 --work "$WORK/loader"
  part pack 300 "$PY" tools/bench_pack.py --frames 16 --rounds 1
else
  loader() { for w in 1 4 8 16; do "$PY" tools/bench_loader.py --frames 3000 --rounds 1 --workers "$w" --batch-size 256 --work "$WORK/loader" | tail -1 || return; done; }
  part loader 20 loader
  part pack 20 "$PY" tools/bench_pack.py --frames 160 --rounds 1 --workers 2,4,8,16
fi

{
  echo "{"
  printf '  %s,\n' "${STATUS[@]}"
  for f in "$RESULTS"/*.txt; do
    line=$(grep '^{' "$f" | tail -1)
    [ -n "$line" ] && echo "  \"$(basename "$f" .txt)_figures\": $line,"
  done
  echo "  \"dry_run\": $([ "$DRY" = 1 ] && echo true || echo false)"
  echo "}"
} > "$RESULTS/summary.json"
cat "$RESULTS/summary.json"
tar czf "$OUT/gpu_check.tar.gz" -C "$OUT" gpu_check && rm -rf "$RESULTS"
rm -rf "$WORK"
