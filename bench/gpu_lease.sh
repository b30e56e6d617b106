#!/usr/bin/env bash
# Everything a device lease measures, in one call (a lease is 15 minutes of device time in all, starts included):
#   1. install the carried wheels (.whl/, see bench/gpu_check.py) and this project into /tmp/site;
#   2. bench/gpu_check.py: 8B vision / prefill / decode (eager and compiled), flash path parity, the rotary variants
#      (fused Triton kernel against the PyTorch rotations), the DataLoader hand-off with and without pin_memory;
#   3. bench/peer_bench.py at the 8B widths (24 x 1024 vision, 36 x 4096 text), two alternating rounds.
# Each step has its own time limit and writes its JSON and log under $OUT as it goes, so a step that fails or runs
# out of time leaves the others' figures. On the device:
#   run(command="bash bench/gpu_lease.sh", carry=[".whl"], timeout_s=570)
# A CPU smoke run of the same steps (tiny shapes, no install): DEVICE=cpu SKIP_INSTALL=1 OUT=/tmp/lease bash bench/gpu_lease.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder that receives the reports}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"

if [ -z "${SKIP_INSTALL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation --upgrade \
        --target /tmp/site .whl/*.whl . > "$OUT/install.log" 2>&1 || { tail -20 "$OUT/install.log"; exit 1; }
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}

if [ "$DEVICE" = cuda ]; then
    check=(--device cuda)
    peer=(--device cuda --vision-depth 24 --vision-width 1024 --text-width 4096 --text-layers 36 --rounds 2)
else
    check=(--device cpu --preset tiny --frames 4)
    peer=(--device cpu --rounds 1 --repeats 1 --new-tokens 4)
fi

started=$SECONDS
timeout 300 "$PYTHON" bench/gpu_check.py "${check[@]}" --output "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check: exit $? after $((SECONDS - started)) s"
started=$SECONDS
timeout 220 "$PYTHON" bench/peer_bench.py "${peer[@]}" --output "$OUT/peer_bench.json" > "$OUT/peer_bench.log" 2>&1
echo "peer_bench: exit $? after $((SECONDS - started)) s"
"$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

for name in ("gpu_check.json", "peer_bench.json"):
    path = Path(sys.argv[1]) / name
    report = json.loads(path.read_text()) if path.exists() else {"missing": str(path)}
    print(name, json.dumps(report)[:2500])
EOF
