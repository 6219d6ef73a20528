#!/usr/bin/env bash
# Exercise the GPU paths whenever a GPU is at hand (≤ 5 minutes): CUDA visible to torch, a bf16
# and an fp16 step, and the built-in recipe end to end on one GPU, with and without mixed
# precision. Records what it saw in bench/results/gpu_check.md. The test suite never needs a GPU;
# on a machine without one this script records that and exits 0.
#
#   bash bench/gpu_check.sh            # uses .venv/bin/python if present, else python3
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=bench/results/gpu_check.md
WORK=$(mktemp -d)
mkdir -p bench/results
{
  echo "# GPU check"
  echo
  echo "Command: \`bash bench/gpu_check.sh\`, $(date -u +%Y-%m-%dT%H:%MZ), $(uname -m)"
  echo
} > "$OUT"

$PY - >> "$OUT" 2>&1 <<'PYEOF'
import torch
print(f"- torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(f"- device: {torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability(0)}, bf16 supported: {torch.cuda.is_bf16_supported()}")
    x = torch.randn(512, 512, device="cuda")
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cuda", dtype=dtype):
            y = x @ x
        print(f"- autocast {dtype}: matmul ok, output {y.dtype}, finite {bool(torch.isfinite(y).all())}")
PYEOF

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "- no GPU here: nothing else to check" >> "$OUT"
  cat "$OUT"; rm -rf "$WORK"; exit 0
fi

status=0
for precision in no bf16 fp16; do
  start=$(date +%s)
  if timeout 150 $PY -m kdistill run train.device=cuda train.mixed_precision=$precision \
      output.dir="$WORK" name=gpu_$precision output.progress=false > "$WORK/$precision.log" 2>&1; then
    acc=$($PY -c "import json; s=json.load(open('$WORK/gpu_$precision/summary.json')); print(' / '.join(f\"{r} {100*s[r]['accuracy']:.2f}%\" for r in ('teacher','scratch','student')), '| device', s['device'])")
    echo "- kdistill run, mixed_precision=$precision: ok in $(( $(date +%s) - start )) s: $acc" >> "$OUT"
  else
    status=1
    echo "- kdistill run, mixed_precision=$precision: FAILED after $(( $(date +%s) - start )) s:" >> "$OUT"
    tail -n 5 "$WORK/$precision.log" | sed 's/^/    /' >> "$OUT"
  fi
done
cat "$OUT"
rm -rf "$WORK"
exit $status
