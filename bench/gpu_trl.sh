#!/usr/bin/env bash
# The TRL backend on one GPU, through anytune (`python -m core`): the runs behind
# docs/benchmarks.md, section "GPU: TRL backend on an H100".
#
# Run from the repository root on the GPU machine (the lent device, kind nvidia-h100-x1), with
# the folders .whl (wheels the image lacks) and .bench (data) beside it. Prepare them once, on a
# machine with pip and ../shared (see docs/benchmarks.md):
#
#   printf '/.whl/\n/.bench/\n' >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     trl==1.16.0 transformers==5.24.0 peft==0.21.2 datasets==5.2.0 dill==0.4.1 \
#     multiprocess==0.70.19 hydra-core==1.3.8 omegaconf==2.3.1 bitsandbytes==0.50.2
#   (transformers 5.24.0: the image's 5.17.0 lacks SFTConfig's activation_checkpointing)
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3      # sdist only on PyPI
#   python ../shared/gpu/slim-wheel.py .whl/bitsandbytes-0.50.2-*.whl \
#     'libbitsandbytes_(cuda1[12][0-9]|rocm[0-9]+|xpu[0-9]+)\.so$'  # 43 MB -> 7 MB
#   mkdir -p .bench/data/gsm8k .bench/data/hh-rlhf
#   head -n 2000 ../shared/data/gsm8k/train.jsonl > .bench/data/gsm8k/train.jsonl
#   zcat ../shared/data/hh-rlhf/harmless-base-test.jsonl.gz | head -n 500 | gzip > .bench/data/hh-rlhf/harmless-base-test.jsonl.gz
#
# then:  OUT=$OUT bash bench/gpu_trl.sh      (the device tool: carry .whl and .bench)
#
# What it does: installs the wheels and anytune itself (so the `anytune` entry points exist)
# into $SITE; builds a Llama-3.2-1B-shaped random-init model with tests/tiny.py (vocab 1024,
# BPE trained on the carried GSM8K + HH-RLHF rows, as tests/tiny.py's default corpus); turns
# the 2,000 GSM8K rows into chat messages; runs one anytune job per entry of $JOBS from a
# directory outside the repo; writes a compact summary into $OUT (summary.json, summary.tsv,
# env.txt, one small tar.gz per job). Settings (environment):
#   OUT ($WORK/out)  JOBS ("lora qlora full")  STEPS (60)  DEVICE (cuda)  PRECISION (bf16)
#   BATCH (8)  MAXLEN (512)  LR (2e-4)  WARMUP (10: rows skipped before the tokens/s median)
#   DIMS (llama1b | tiny, a 2-layer toy for a CPU dry run)  JOB_TIMEOUT (170 s per job)
#   PYTHON (python3)  SITE (/tmp/anytune-site)  WORK (/tmp/anytune-bench)  WHL (.whl)
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
JOBS=${JOBS:-lora qlora full}
STEPS=${STEPS:-60}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
BATCH=${BATCH:-8}
MAXLEN=${MAXLEN:-512}
LR=${LR:-2e-4}
WARMUP=${WARMUP:-10}
DIMS=${DIMS:-llama1b}
JOB_TIMEOUT=${JOB_TIMEOUT:-170}
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/anytune-site}
WHL=${WHL:-$ROOT/.whl}
WORK=${WORK:-/tmp/anytune-bench}
OUT=${OUT:-$WORK/out}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1
t0=$(date +%s)
say() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

# --- environment -------------------------------------------------------------------------
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -V
  "$PYTHON" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|accelerate|huggingface.hub|tokenizers|pyarrow|fsspec|setuptools|pluggy|rich|jinja2|numpy|xxhash|pandas|bitsandbytes|trl|datasets) '
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# --- install: the carried wheels, then anytune itself -------------------------------------
say "installing wheels into $SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$WHL"/*.whl || { echo "wheel install failed"; exit 1; }
src=$(mktemp -d)  # a clean copy: no stale build/ of the checkout leaks into the install
cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/core" "$ROOT/plugins" "$ROOT/conf" "$src/"
if "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade \
    --target "$SITE" "$src" > "$WORK/install.log" 2>&1; then
  echo "anytune: installed with pip (setuptools build)" >> "$OUT/env.txt"
else  # no usable setuptools: the packages and a hand-written dist-info carry the same entry points
  cat "$WORK/install.log"
  cp -r "$src/core" "$src/plugins" "$src/conf" "$SITE/"
  mkdir -p "$SITE/anytune-0.1.0.dist-info"
  printf 'Metadata-Version: 2.1\nName: anytune\nVersion: 0.1.0\n' > "$SITE/anytune-0.1.0.dist-info/METADATA"
  sed -n '/^\[project.entry-points.anytune\]/,/^$/p' "$src/pyproject.toml" | sed 's/^\[project.entry-points.anytune\]/[anytune]/' | tr -d '"' \
    > "$SITE/anytune-0.1.0.dist-info/entry_points.txt"
  echo "anytune: pip install failed; copied with a hand-written dist-info" >> "$OUT/env.txt"
fi
cd "$WORK" || exit 1  # from here on the repository is not on sys.path: the installed anytune runs
"$PYTHON" - <<'EOF' >> "$OUT/env.txt" 2>&1
import importlib.metadata as m, core
print("anytune from", core.__file__)
print("entry points:", [f"{e.name}={e.value}" for e in m.entry_points(group="anytune")])
for d in ("trl", "transformers", "peft", "torch", "datasets", "accelerate", "bitsandbytes", "hydra-core", "omegaconf"):
    try:
        print(d, m.version(d))
    except m.PackageNotFoundError:
        print(d, "missing")
EOF
tail -n 12 "$OUT/env.txt"
"$PYTHON" -m core.backends 2>&1 | tail -n 8

# --- model and data ----------------------------------------------------------------------
MODEL=$WORK/model-$DIMS
DATA=$WORK/gsm8k_sft_2000.jsonl
say "building the $DIMS model in $MODEL"
ROOT=$ROOT MODEL=$MODEL DIMS=$DIMS DATA=$DATA "$PYTHON" "$ROOT/bench/gpu_model.py" || { echo "model build failed"; exit 1; }

# --- the jobs ----------------------------------------------------------------------------
run_job() {  # name, then overrides
  local name=$1; shift
  local rd=$WORK/runs/$name
  rm -rf "$rd"
  say "job $name: python -m core $*"
  local s=$(date +%s%N)
  timeout -k 10 "$JOB_TIMEOUT" "$PYTHON" -m core offline=true backend=trl \
    model.name_or_path="$MODEL" data.train="$DATA" \
    train.precision="$PRECISION" train.device="$DEVICE" train.batch_size="$BATCH" \
    train.max_length="$MAXLEN" train.max_steps="$STEPS" train.learning_rate="$LR" \
    run_dir="$rd" hydra.run.dir="$rd" "$@" > "$WORK/$name.console.log" 2>&1
  local rc=$?
  local e=$(date +%s%N)
  echo "{\"exit_code\": $rc, \"outer_wall_ms\": $(( (e - s) / 1000000 ))}" > "$WORK/$name.outer.json"
  tail -n 15 "$WORK/$name.console.log"
  say "job $name: exit $rc"
  ( cd "$rd" 2>/dev/null && tar czf "$OUT/$name.tar.gz" --ignore-failed-read result.json metrics.jsonl config.yaml \
      data/stats.json plan/trl_args.json plan/command.json logs/stdout.log logs/stderr.log \
      -C "$WORK" "$name.console.log" 2>/dev/null )
}
for job in $JOBS; do
  case $job in
    lora)  run_job lora peft=lora ;;
    dora)  run_job dora peft=dora ;;
    qlora) run_job qlora peft=qlora ;;
    full)  run_job full peft=none train.save_artifacts=false ;;  # a 4 GB fp32 checkpoint is not what is measured
    *) echo "unknown job $job" ;;
  esac
done

# --- summary -----------------------------------------------------------------------------
say "summary"
WORK=$WORK OUT=$OUT JOBS="$JOBS" WARMUP=$WARMUP "$PYTHON" - <<'EOF'
import json, os, statistics
from pathlib import Path
work, out, warm = Path(os.environ["WORK"]), Path(os.environ["OUT"]), int(os.environ["WARMUP"])
def load(p, default=None):
    try:
        return json.loads(Path(p).read_text())
    except Exception:
        return default
summary = {"model": load(work / "model-info.json", {}), "jobs": {}}
cols = ["job", "status", "steps", "first_loss", "last_loss", "eval_loss", "tokens_per_s_median", "tokens_per_s_overall", "s_per_step_median",
        "peak_memory_mb", "wall_s", "train_seconds", "startup_s", "train_loop_s", "worker_pre_post_s",
        "trainable_parameters", "train_rows", "train_tokens", "error"]
rows = []
for job in os.environ["JOBS"].split():
    rd = work / "runs" / job
    res = load(rd / "result.json", {})
    metrics = [json.loads(l) for l in (rd / "metrics.jsonl").read_text().splitlines() if l.strip()] \
        if (rd / "metrics.jsonl").exists() else []
    train = [m for m in metrics if "loss" in m]
    after = [m for m in train if m.get("step", 0) > warm and m.get("tokens")]
    base = [m for m in train if m.get("step", 0) <= warm and m.get("tokens")]  # overall: from the last warm-up row
    tps = [m["tokens_per_s"] for m in after if m.get("tokens_per_s")]
    steps_dt = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(after, after[1:]) if b["step"] == a["step"] + 1]
    final = res.get("final", {})
    wall, ts = res.get("wall_seconds"), res.get("train_seconds")
    loop = train[-1]["elapsed_s"] if train else None
    row = {"job": job, "status": res.get("status", "no result.json"), "steps": final.get("steps"),
           "first_loss": final.get("first_loss"), "last_loss": final.get("last_loss"),
           "eval_loss": final.get("eval_loss"),
           "tokens_per_s_median": statistics.median(tps) if tps else None,
           "tokens_per_s_overall": round((after[-1]["tokens"] - base[-1]["tokens"]) /
                                         (after[-1]["elapsed_s"] - base[-1]["elapsed_s"]), 1)
           if after and base and after[-1]["elapsed_s"] > base[-1]["elapsed_s"] else None,
           "s_per_step_median": round(statistics.median(steps_dt), 4) if steps_dt else None,
           "peak_memory_mb": res.get("peak_memory_mb"), "wall_s": wall, "train_seconds": ts,
           "startup_s": round(wall - ts, 2) if wall and ts else None, "train_loop_s": loop,
           "worker_pre_post_s": round(ts - loop, 2) if ts and loop else None,
           "trainable_parameters": res.get("trainable_parameters"),
           "train_rows": (res.get("data") or {}).get("rows", {}).get("train") if isinstance((res.get("data") or {}).get("rows"), dict) else None,
           "train_tokens": None, "error": (res.get("error") or "")[:400] or None}
    stats = load(rd / "data" / "stats.json", {})
    row["train_tokens"] = json.dumps(stats.get("tokens"))[:200] if stats.get("tokens") else None
    rows.append(row)
    summary["jobs"][job] = {"row": row, "outer": load(work / f"{job}.outer.json"), "versions": res.get("versions"),
                            "hardware": res.get("hardware"), "engine_version": res.get("engine_version"),
                            "exit_code": res.get("exit_code"), "error": res.get("error"),
                            "traceback": res.get("traceback"), "data_stats": stats,
                            "metrics": metrics}
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
with open(out / "summary.tsv", "w") as f:
    f.write("\t".join(cols) + "\n")
    for r in rows:
        f.write("\t".join("" if r[c] is None else str(r[c]) for c in cols) + "\n")
print((out / "summary.tsv").read_text())
EOF
say "done"
