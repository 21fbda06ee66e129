#!/usr/bin/env bash
# python -m core.estimate against measured peaks at shapes its memory profiles were not fitted on: TRL through
# anytune on a random-init Llama-3.2-1B shape (vocab 128,256), GSM8K as chat, packed (every micro-batch holds
# batch x max_length tokens, so the peak is reached at step 1), a few steps per job. For each job: the estimate
# (python -m core.estimate --json, on the device, with the same overrides) and the run's peak
# (max of metrics.jsonl's peak_memory_mb: torch.cuda.max_memory_allocated) and median tokens/s.
# Prepare .whl and .bench as bench/gpu_shape.sh's header says; then (device tool, carry .whl and .bench):
#   OUT=$OUT bash bench/gpu_estimate.sh
# Settings: STEPS (8), JOBS (names below, space-separated; default all); CPU dry run (the project's venv, nothing
# installed): INSTALL=0 DIMS=tiny VOCAB=1024 DEVICE=cpu PREC=fp32 STEPS=3 JOBS="dora4x1024 full2x1024" bash bench/gpu_estimate.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/anytune-out}; W=${WORK:-/tmp/anytune-est}; SITE=${SITE:-/tmp/anytune-site}; STEPS=${STEPS:-8}
DIMS=${DIMS:-llama1b}; DEVICE=${DEVICE:-cuda}; PREC=${PREC:-bf16}; INSTALL=${INSTALL:-1}
mkdir -p "$OUT" "$W"
[ "$INSTALL" = 1 ] && { python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$ROOT"/.whl/*.whl \
  $(ls "$ROOT"/.whl-us/bitsandbytes-*.whl 2>/dev/null) || exit 1   # bitsandbytes for QLoRA (carry .whl-us too)
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$ROOT" > "$W/install.log" 2>&1 \
  || { cat "$W/install.log"; exit 1; }; export PYTHONPATH=$SITE; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; python3 -V
  python3 -c "import importlib.metadata as m
for d in ('torch','transformers','trl','peft','bitsandbytes','anytune'): print(d, m.version(d) if d != 'bitsandbytes' or __import__('importlib').util.find_spec(d) else None)"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
ROOT=$ROOT MODEL=$W/model DATA=$W/chat.jsonl DIMS=$DIMS VOCAB=${VOCAB:-128256} MAXPOS=4096 python3 "$ROOT/bench/gpu_model.py" || exit 1
declare -A J=(
  [lora8x2048]="peft=lora peft.alpha=16 train.batch_size=8 train.max_length=2048"
  [lora_qv_r64_4x1024]="peft=lora peft.r=64 peft.target_modules=[q_proj,v_proj] train.batch_size=4 train.max_length=1024"
  [dora4x1024]="peft=dora train.batch_size=4 train.max_length=1024"
  [lora_gc16x2048]="peft=lora train.batch_size=16 train.max_length=2048 train.gradient_checkpointing=true"
  [qlora4x2048]="peft=qlora train.batch_size=4 train.max_length=2048"
  [full2x1024]="peft=none train.batch_size=2 train.max_length=1024 train.save_artifacts=false"
  [full_gc4x2048]="peft=none train.batch_size=4 train.max_length=2048 train.gradient_checkpointing=true train.save_artifacts=false"
)
for name in ${JOBS:-lora8x2048 lora_qv_r64_4x1024 dora4x1024 lora_gc16x2048 qlora4x2048 full2x1024 full_gc4x2048}; do
  args="offline=true backend=trl model.name_or_path=$W/model data.train=$W/chat.jsonl method.packing=true \
train.max_steps=$STEPS train.precision=$PREC train.device=$DEVICE ${J[$name]}"
  ( cd "$W" && python3 -m core.estimate --json $args ) > "$W/$name.estimate.json" 2> "$W/$name.estimate.err"
  ( cd "$W" && timeout -k 10 300 python3 -m core $args run_dir="$W/$name" quiet=true ) > "$W/$name.log" 2>&1
  echo "$name: exit $?"; tail -n 2 "$W/$name.log"
done
python3 - "$W" "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
w, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for est_file in sorted(w.glob("*.estimate.json")):
    name = est_file.name[: -len(".estimate.json")]
    d = w / name
    try:
        est = json.loads(est_file.read_text())
    except ValueError:
        est = {"error": (w / f"{name}.estimate.err").read_text()[-300:]}
    r = json.loads((d / "result.json").read_text()) if (d / "result.json").exists() else {}
    m = [json.loads(l) for l in open(d / "metrics.jsonl")] if (d / "metrics.jsonl").exists() else []
    speeds = [x["tokens_per_s"] for x in m if x.get("tokens_per_s") and x.get("step", 0) > 2]
    peak = max((x.get("peak_memory_mb", 0) for x in m), default=0) or r.get("peak_memory_mb") or 0
    mem = (est.get("memory") or {}).get("total")
    rows.append({"job": name, "status": r.get("status"), "peak_gib": round(peak / 1024, 2),
                 "estimate_gib": round(mem / 2**30, 2) if mem else None,
                 "error_pct": round(100 * (mem / 2**30 / (peak / 1024) - 1), 1) if mem and peak else None,
                 "parts_gib": {k: round(v / 2**30, 2) for k, v in ((est.get("memory") or {}).get("parts") or {}).items()},
                 "fits": (est.get("memory") or {}).get("fits"), "device": (est.get("memory") or {}).get("device"),
                 "tokens_per_s_median": statistics.median(speeds) if speeds else None,
                 "estimate_tokens_per_s": (est.get("time") or {}).get("tokens_per_s"),
                 "trainable_parameters": r.get("trainable_parameters"),
                 "estimate_trainable": est.get("trainable_parameters"), "error": (r.get("error") or est.get("error") or "")[:300]})
(out / "summary.json").write_text(json.dumps(rows, indent=2))
for row in rows:
    print(json.dumps(row))
PY
