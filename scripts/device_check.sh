#!/usr/bin/env bash
# One prepared GPU check of ruclip-tiny (docs/GPU.md): exports the synthetic bundle, checks fp32 and fp16 parity of
# the torch backend on CUDA (probe and stress inputs), measures latency p50/p99 and throughput of both encoders at
# batch 1, 8, 32, 128, 256 for eager, CUDA-graph and compiled torch, and — only where tensorrt imports — builds the
# TensorRT engines, checks their parity and times them. Writes JSON into OUTDIR and prints a short table last.
#
#   scripts/device_check.sh OUTDIR [--dry-run] [--bundle PATH] [--wheelhouse DIR] [--budget SECONDS]
#
# Runs from a copy of the repository (no install, nothing from the network: PYTHONPATH=.). Every step is its own
# process under `timeout` with its own budget, and no step starts past the total budget (default 340 s, inside the
# 6 minutes a run may take), so one slow step cannot sink the rest. --dry-run: the same steps on the CPU at tiny
# sizes, CUDA-only parts skipped with the reason. --bundle: use an exported bundle instead of exporting one.
# --wheelhouse: pure-Python wheels (e.g. polygraphy, onnxscript) installed offline into OUTDIR/.pydeps first.
set -uo pipefail

usage() { echo "usage: $0 OUTDIR [--dry-run] [--bundle PATH] [--wheelhouse DIR] [--budget SECONDS]" >&2; exit 2; }
[[ $# -ge 1 && $1 != -* ]] || usage
OUT=$1
shift
DRY=()
BUNDLE=()
WHEELHOUSE=""
TOTAL=340
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY=(--dry-run); shift ;;
    --bundle) [[ $# -ge 2 ]] || usage; BUNDLE=(--bundle "$(cd "$2" && pwd)") || exit 2; shift 2 ;;
    --wheelhouse) [[ $# -ge 2 ]] || usage; WHEELHOUSE=$2; shift 2 ;;
    --budget) [[ $# -ge 2 ]] || usage; TOTAL=$2; shift 2 ;;
    *) usage ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
REPORT_RESERVE=15
STEPS_JSON="$OUT/steps.json"
echo "{}" > "$STEPS_JSON"

if [[ -n $WHEELHOUSE ]]; then
  "$PY" -m pip install --quiet --no-index --no-deps --target "$OUT/.pydeps" "$WHEELHOUSE"/*.whl || {
    echo "device check: could not install the wheels in $WHEELHOUSE" >&2; exit 2; }
  export PYTHONPATH="$PYTHONPATH:$OUT/.pydeps"
fi

record() {  # record STEP STATUS SECONDS BUDGET
  "$PY" - "$STEPS_JSON" "$1" "$2" "$3" "$4" <<'EOF'
import json, sys
path, step, status, seconds, budget = sys.argv[1:]
steps = json.load(open(path))
steps[step] = {"status": status, "seconds": int(seconds), "budget_s": int(budget)}
json.dump(steps, open(path, "w"), indent=2)
EOF
}

# step NAME BUDGET ARGS...: run one step with min(BUDGET, what is left before the report) seconds.
step() {
  local name=$1 budget=$2
  shift 2
  local left=$(( TOTAL - ($(date +%s) - START) - REPORT_RESERVE ))
  (( budget > left )) && budget=$left
  if (( budget < 5 )); then
    echo "== $name: not started, the ${TOTAL}s budget is spent"
    record "$name" "not started: total budget spent" 0 0
    return 1
  fi
  echo "== $name (budget ${budget}s)"
  local began=$(date +%s) rc
  # The step spreads its own budget (--seconds, with a margin for start-up); timeout is the hard stop.
  timeout --kill-after=5 "$budget" "$PY" scripts/device_check.py "${name%%:*}" --out "$OUT" "${DRY[@]}" \
    "${BUNDLE[@]}" --seconds $(( budget * 3 / 4 )) "$@"
  rc=$?
  local took=$(( $(date +%s) - began ))
  case $rc in
    0) record "$name" ok "$took" "$budget" ;;
    124|137) echo "== $name: stopped by its ${budget}s budget"; record "$name" "timed out after ${budget}s" "$took" "$budget" ;;
    *) echo "== $name: failed (exit $rc)"; record "$name" "failed (exit $rc)" "$took" "$budget" ;;
  esac
  return $rc
}

step preflight 60 || { echo "device check: preflight failed, nothing else runs (see above)"; exit 2; }
if [[ ${#BUNDLE[@]} -eq 0 ]]; then
  step export 170 || { REPORT_RESERVE=0; step report 15; exit 1; }
fi
step parity 60
step bench:eager 75 --variant eager
step bench:graphs 45 --variant graphs
step tensorrt 120
step bench:compile 90 --variant compile
REPORT_RESERVE=0
step report 15
