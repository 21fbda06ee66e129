#!/usr/bin/env bash
# The TRL backend through anytune at the shape people train: a random-init Llama-3.2-1B shape (vocab
# 128,256, tied embeddings), GSM8K as chat (7,473 rows), sequence 2,048 with packing, LoRA r16 on every
# linear layer, bf16, batch 8; once with train.gradient_checkpointing=false (the default) and once true.
# Prints a table and writes $OUT/summary.json.
#
# Prepare once on a machine with pip (wheels the GPU image lacks; data carried, nothing from a hub):
#   printf '/.whl/\n/.bench/\n' >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl trl==1.16.0 \
#     transformers==5.24.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 hydra-core==1.3.2 \
#     omegaconf==2.3.0 pluggy==1.6.0 rich markdown-it-py mdurl pygments xxhash
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
#   mkdir -p .bench/data/gsm8k .bench/data/hh-rlhf && cp ../shared/data/gsm8k/train.jsonl .bench/data/gsm8k/
#   zcat ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz | head -n 500 | gzip > .bench/data/hh-rlhf/harmless-base-test.jsonl.gz
# then on the GPU machine (the device tool: carry .whl and .bench):  OUT=$OUT bash bench/gpu_shape.sh
# Settings: STEPS (40), BATCH (8), DIMS (llama1b | tiny for a CPU dry run with DEVICE=cpu PREC=fp32).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-/tmp/anytune-out}; W=${WORK:-/tmp/anytune-shape}; SITE=${SITE:-/tmp/anytune-site}
STEPS=${STEPS:-40}; BATCH=${BATCH:-8}; DIMS=${DIMS:-llama1b}; DEVICE=${DEVICE:-cuda}; PREC=${PREC:-bf16}
mkdir -p "$OUT" "$W"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$ROOT"/.whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$ROOT" > "$W/install.log" 2>&1 \
  || { cat "$W/install.log"; exit 1; }
export PYTHONPATH=$SITE HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null; python3 -V
  python3 -c "import importlib.metadata as m
for d in ('torch','transformers','trl','peft','accelerate','anytune'): print(d, m.version(d))"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
ROOT=$ROOT MODEL=$W/model DATA=$W/chat.jsonl DIMS=$DIMS VOCAB=128256 MAXPOS=4096 python3 "$ROOT/bench/gpu_model.py" || exit 1
for gc in false true; do
  ( cd "$W" && timeout -k 10 400 python3 -m core offline=true backend=trl model.name_or_path="$W/model" \
      data.train="$W/chat.jsonl" method.packing=true train.batch_size=$BATCH train.max_length=2048 \
      train.max_steps=$STEPS train.precision=$PREC train.device=$DEVICE train.gradient_checkpointing=$gc \
      run_dir="$W/gc-$gc" quiet=true ) > "$W/gc-$gc.log" 2>&1
  echo "gradient_checkpointing=$gc: exit $?"; tail -n 3 "$W/gc-$gc.log"
done
python3 - "$W" "$OUT" <<'PY'
import json, statistics, sys
from pathlib import Path
w, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = []
for gc in ("false", "true"):
    d = w / f"gc-{gc}"
    r = json.loads((d / "result.json").read_text()) if (d / "result.json").exists() else {}
    m = [json.loads(l) for l in open(d / "metrics.jsonl")] if (d / "metrics.jsonl").exists() else []
    speeds = [x["tokens_per_s"] for x in m if x.get("tokens_per_s") and x.get("step", 0) > 10]
    args = json.loads((d / "plan" / "trl_args.json").read_text())["args"] if (d / "plan" / "trl_args.json").exists() else {}
    rows.append({"gradient_checkpointing": gc, "status": r.get("status"), "plan_activation_checkpointing": args.get("activation_checkpointing"),
                 "tokens_per_s_median": statistics.median(speeds) if speeds else None,
                 "peak_gib": round(max((x.get("peak_memory_mb", 0) for x in m), default=0) / 1024, 2),
                 "first_loss": (r.get("final") or {}).get("first_loss"), "last_loss": (r.get("final") or {}).get("last_loss"),
                 "steps": (r.get("final") or {}).get("steps"), "train_seconds": r.get("train_seconds"),
                 "wall_seconds": r.get("wall_seconds"), "worker_seconds": r.get("worker_seconds"),
                 "trainable_parameters": r.get("trainable_parameters"), "error": (r.get("error") or "")[:300]})
(out / "summary.json").write_text(json.dumps(rows, indent=2))
for row in rows:
    print(json.dumps(row))
PY
for gc in false true; do cp "$W/gc-$gc.log" "$OUT/" 2>/dev/null; cp "$W/gc-$gc/logs/train.stderr.log" "$OUT/gc-$gc.stderr.log" 2>/dev/null; done
