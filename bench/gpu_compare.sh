#!/usr/bin/env bash
# The same SFT job on TRL and torchtune, through anytune, as one Hydra multirun
# (`python -m core -m backend=trl,torchtune ...`): the runs behind docs/benchmarks.md, section
# "GPU: the same job on TRL and torchtune".
#
# Run from the repository root on the GPU machine (the lent device, kind nvidia-h100-x1), with
# .whl (TRL's side: the wheels of bench/gpu_trl.sh), .whl-tt (torchtune's side: torchtune 0.6.1,
# torchao 0.15.0, torchdata 0.11.0, omegaconf 2.4.0, antlr4 4.13.2, datasets, dill, multiprocess,
# blobfile, pycryptodomex, kagglehub, kagglesdk) and .bench (data) beside it:
#
#   OUT=$OUT bash bench/gpu_compare.sh          (the device tool: carry .whl, .whl-tt and .bench)
#
# .whl and .bench: see bench/gpu_trl.sh. .whl-tt held these files (this line should fetch them;
# it was not re-run for this benchmark):
#   printf '/.whl-tt/\n' >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl-tt \
#     torchtune==0.6.1 torchao==0.15.0 torchdata==0.11.0 omegaconf==2.4.0 antlr4-python3-runtime==4.13.2 \
#     datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 blobfile==3.3.0 pycryptodomex==3.24.2 \
#     kagglehub==1.0.3 kagglesdk==0.1.38
# To measure a commit rather than the working tree (another edit in progress, say), export it and
# point SRC at it:  git archive HEAD pyproject.toml README.md core plugins conf tests/tiny.py \
#   | tar -x -C .src-head && git rev-parse HEAD > .src-head/COMMIT   (then carry .src-head too)
#
# The two engines never share a site-packages: torchao 0.15 beside peft 0.21 makes peft refuse
# LoRA. TRL's wheels and anytune itself (so its entry points exist) go into $SITE, on PYTHONPATH
# for anytune and its TRL worker; torchtune's wheels go into $SITE_TT, seen only through the
# interpreter $TT_PYTHON, a shell wrapper that runs `$TT_BASE` with PYTHONPATH=$SITE_TT (both
# over the image's torch). The wrapper is put where anytune looks for torchtune's managed
# environment ($ANYTUNE_HOME/envs/torchtune-<hash>/bin/python, with the marker file), so the
# sweep needs no per-job override: `backend.python=...` in a sweep over two backends would be
# given to both, and TRL would then start in torchtune's site. MODE=single instead runs two
# single jobs, torchtune's with backend.python=$TT_PYTHON.
# The wrapper also logs how long each torchtune process ran ($WORK/tt-python.times): the
# torchtune backend records no worker_seconds. It does not exec, so it does not pass on an
# interrupt (the benchmark never sends one).
#
# Sweeps ($SWEEPS, in order): lora = `peft=lora backend=trl,torchtune`; full = `peft=none
# backend=trl,torchtune train.save_artifacts=false` (run only if less than $FULL_IF_BELOW seconds
# have passed). Output in $OUT (at most 8 files): summary.tsv, summary.json (every job: the row,
# versions, hardware, error, metrics), env.txt, jobs.tar.gz (per job: result.json, metrics.jsonl,
# config.yaml, data/stats.json, plan files, logs; each sweep's summary.json and console log).
# Settings (environment): OUT ($WORK/out)  SWEEPS ("lora full")  STEPS (60)  DEVICE (cuda)
#   PRECISION (bf16)  BATCH (8)  MAXLEN (512)  LR (2e-4)  WARMUP (10: rows skipped before the
#   tokens/s median)  DIMS (llama1b | tiny: a 2-layer toy for a CPU dry run)  SWEEP_TIMEOUT (260 s)
#   FULL_IF_BELOW (240 s)  MODE (sweep | single)  PYTHON (python3)  TT_BASE ($PYTHON)
#   SITE (/tmp/site)  SITE_TT (/tmp/site-tt)  TT_PYTHON (/tmp/tt-python)  WORK (/tmp/anytune-compare)
#   WHL (.whl; empty: install no TRL wheels)  WHL_TT (.whl-tt; empty: none)  SRC (the checkout:
#   anytune's sources to install; empty: use the anytune $PYTHON already has)
# CPU dry run (the project's venv and torchtune's managed environment, no wheels):
#   DIMS=tiny DEVICE=cpu PRECISION=fp32 STEPS=12 WARMUP=2 WHL= WHL_TT= SITE=/tmp/dry-site \
#   PYTHON=/work/venv/bin/python TT_BASE=$(python -m core.envs path torchtune) bash bench/gpu_compare.sh
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SWEEPS=${SWEEPS:-lora full}
STEPS=${STEPS:-60}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
BATCH=${BATCH:-8}
MAXLEN=${MAXLEN:-512}
LR=${LR:-2e-4}
WARMUP=${WARMUP:-10}
DIMS=${DIMS:-llama1b}
SWEEP_TIMEOUT=${SWEEP_TIMEOUT:-260}
FULL_IF_BELOW=${FULL_IF_BELOW:-240}
MODE=${MODE:-sweep}
PYTHON=$(command -v "${PYTHON:-python3}")
TT_BASE=${TT_BASE:-$PYTHON}
SITE=${SITE:-/tmp/site}
SITE_TT=${SITE_TT:-/tmp/site-tt}
TT_PYTHON=${TT_PYTHON:-/tmp/tt-python}
WHL=${WHL-$ROOT/.whl}
WHL_TT=${WHL_TT-$ROOT/.whl-tt}
SRC=${SRC-$ROOT}
[ -n "$SRC" ] && SRC=$(cd "$SRC" && pwd)
WORK=${WORK:-/tmp/anytune-compare}
OUT=${OUT:-$WORK/out}
rm -rf "$WORK/runs" "$WORK/anytune-home" "$WORK/tt-python.times"
mkdir -p "$OUT" "$WORK/runs" "$SITE" "$SITE_TT"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export ANYTUNE_HOME=$WORK/anytune-home
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1
t0=$(date +%s)
say() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

# --- install: TRL's side and anytune into $SITE, torchtune's side into $SITE_TT ----------------
if [ -n "$WHL" ]; then
  say "installing $WHL into $SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHL"/*.whl || { echo "TRL wheel install failed"; exit 1; }
fi
if [ -n "$WHL_TT" ]; then
  say "installing $WHL_TT into $SITE_TT"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE_TT" \
    "$WHL_TT"/*.whl || { echo "torchtune wheel install failed"; exit 1; }
fi
if [ -n "$SRC" ]; then
  say "installing anytune from $SRC into $SITE"
  src=$(mktemp -d)  # a clean copy: no stale build/ of the checkout leaks into the install
  cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/core" "$SRC/plugins" "$SRC/conf" "$src/"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade \
    --target "$SITE" "$src" > "$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; echo "anytune install failed"; exit 1; }
fi
cat > "$TT_PYTHON" <<EOF
#!/bin/sh
# torchtune's interpreter (bench/gpu_compare.sh): $TT_BASE over $SITE_TT alone, timed
s=\$(date +%s%N)
PYTHONPATH=$SITE_TT "$TT_BASE" "\$@"
rc=\$?
echo "\$(( (\$(date +%s%N) - s) / 1000000 )) \$rc \$PWD \$*" >> "$WORK/tt-python.times"
exit \$rc
EOF
chmod +x "$TT_PYTHON"

cd "$WORK" || exit 1  # from here on the checkout is not on sys.path: the installed anytune runs
# torchtune's "managed environment" is the wrapper (see the header)
TT_PYTHON=$TT_PYTHON "$PYTHON" - <<'EOF' || { echo "registering torchtune's interpreter failed"; exit 1; }
import json, os
from pathlib import Path
from core import envs
from plugins.torchtune.translate import TorchtuneBackend
env = envs.of(TorchtuneBackend)
(env.path / "bin").mkdir(parents=True, exist_ok=True)
if env.python.is_symlink() or env.python.exists():
    env.python.unlink()
env.python.symlink_to(os.environ["TT_PYTHON"])
(env.path / envs.MARKER).write_text(json.dumps({"backend": "torchtune", "requirements": list(env.requirements),
                                                "note": "made by bench/gpu_compare.sh: a wrapper, not a venv"}))
print("torchtune interpreter:", envs.interpreter(TorchtuneBackend(None)), "->", os.environ["TT_PYTHON"])
EOF

# --- environment -----------------------------------------------------------------------------
{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  uname -r; echo "cpus: $(nproc)"
  echo "anytune source: $SRC $(cat "$SRC/COMMIT" 2>/dev/null)"
  "$PYTHON" -V
  echo "--- anytune's and TRL's side (PYTHONPATH=$SITE)"
  "$PYTHON" - <<'EOF'
import importlib.metadata as m, core, sys
print("anytune from", core.__file__)
print("entry points:", [f"{e.name}={e.value}" for e in m.entry_points(group="anytune")])
for d in ("torch", "trl", "transformers", "peft", "datasets", "accelerate", "bitsandbytes", "hydra-core",
          "omegaconf", "tokenizers", "safetensors", "jinja2", "torchao", "torchtune"):
    try:
        print(d, m.version(d))
    except m.PackageNotFoundError:
        print(d, "missing")
EOF
  echo "--- torchtune's side ($TT_PYTHON)"
  "$TT_PYTHON" - <<'EOF'
import importlib.metadata as m
for d in ("torch", "torchtune", "torchao", "torchdata", "omegaconf", "tokenizers", "safetensors", "jinja2",
          "datasets", "huggingface-hub", "peft", "trl", "transformers"):
    try:
        print(d, m.version(d))
    except m.PackageNotFoundError:
        print(d, "missing")
import torchtune, torchao  # noqa: F401  (imports cleanly?)
print("torchtune imports from", torchtune.__file__)
EOF
  "$PYTHON" -m core.backends 2>&1 | tail -n 6
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# --- model and data --------------------------------------------------------------------------
MODEL=$WORK/model-$DIMS
DATA=$WORK/gsm8k_sft_2000.jsonl
say "building the $DIMS model in $MODEL"
ROOT=$ROOT TINY=${SRC:-$ROOT}/tests MODEL=$MODEL DIMS=$DIMS DATA=$DATA "$PYTHON" "$ROOT/bench/gpu_model.py" || { echo "model build failed"; exit 1; }

# --- the jobs: one multirun per sweep --------------------------------------------------------
COMMON=(offline=true model.name_or_path="$MODEL" data.train="$DATA" train.device="$DEVICE"
        train.precision="$PRECISION" train.batch_size="$BATCH" train.max_length="$MAXLEN"
        train.max_steps="$STEPS" train.learning_rate="$LR")
run_sweep() {  # name, then overrides
  local name=$1; shift
  local dir=$WORK/runs/$name
  local s=$(date +%s%N) rc
  if [ "$MODE" = single ]; then
    say "sweep $name as two single jobs"
    mkdir -p "$dir"
    for b in trl torchtune; do
      local extra=(); [ "$b" = torchtune ] && extra=(backend.python="$TT_PYTHON")
      local n=$([ "$b" = trl ] && echo 0 || echo 1)
      echo "+ $PYTHON -m core backend=$b ${extra[*]} ${COMMON[*]} $* run_dir=$dir/$n-$b-sft hydra.run.dir=$dir/$n-$b-sft"
      timeout -k 10 "$SWEEP_TIMEOUT" "$PYTHON" -m core backend=$b "${extra[@]}" "${COMMON[@]}" "$@" \
        run_dir="$dir/$n-$b-sft" hydra.run.dir="$dir/$n-$b-sft" >> "$WORK/$name.console.log" 2>&1
      echo "$b exit $?" >> "$WORK/$name.console.log"
    done
    rc=0
  else
    echo "+ $PYTHON -m core -m backend=trl,torchtune ${COMMON[*]} $* hydra.sweep.dir=$dir"
    say "sweep $name"
    timeout -k 10 "$SWEEP_TIMEOUT" "$PYTHON" -m core -m backend=trl,torchtune "${COMMON[@]}" "$@" \
      hydra.sweep.dir="$dir" > "$WORK/$name.console.log" 2>&1
    rc=$?
  fi
  echo "{\"exit_code\": $rc, \"outer_wall_ms\": $(( ($(date +%s%N) - s) / 1000000 ))}" > "$dir/outer.json"
  tail -n 25 "$WORK/$name.console.log"
  say "sweep $name: exit $rc"
}
for sweep in $SWEEPS; do
  case $sweep in
    lora) run_sweep lora peft=lora ;;
    dora) run_sweep dora peft=dora ;;
    full)
      if [ $(( $(date +%s) - t0 )) -lt "$FULL_IF_BELOW" ]; then
        run_sweep full peft=none train.save_artifacts=false  # a multi-GB checkpoint is not what is measured
      else
        say "sweep full skipped: $(( $(date +%s) - t0 )) s have passed (FULL_IF_BELOW=$FULL_IF_BELOW)"
      fi ;;
    *) echo "unknown sweep $sweep" ;;
  esac
done

# --- summary ---------------------------------------------------------------------------------
say "summary"
WORK=$WORK OUT=$OUT SWEEPS="$SWEEPS" WARMUP=$WARMUP "$PYTHON" - <<'EOF'
import json, os, statistics
from pathlib import Path
work, out, warm = Path(os.environ["WORK"]), Path(os.environ["OUT"]), int(os.environ["WARMUP"])
def load(p, default=None):
    try:
        return json.loads(Path(p).read_text())
    except Exception:
        return default
times = []  # torchtune processes as the wrapper timed them, in order
if (work / "tt-python.times").exists():
    for line in (work / "tt-python.times").read_text().splitlines():
        ms, rc, cwd, args = line.split(" ", 3)
        if "torchtune._cli.tune" in args:
            times.append({"ms": int(ms), "rc": int(rc), "run_dir": cwd, "args": args})
summary = {"model": load(work / "model-info.json", {}), "jobs": {}, "sweeps": {}}
cols = ["job", "backend", "status", "exit_code", "steps", "step1_loss", "first_loss", "last_loss",
        "mean_loss_last10", "trainable_parameters", "tokens_per_s_median", "tokens_per_s_overall",
        "s_per_step_median", "loop_s", "peak_memory_mb", "wall_s", "train_seconds", "worker_seconds",
        "engine_process_s", "tokens_at_end", "error"]
rows = []
for sweep in os.environ["SWEEPS"].split():
    sd = work / "runs" / sweep
    if not sd.is_dir():
        continue
    summary["sweeps"][sweep] = {"outer": load(sd / "outer.json"), "summary": load(sd / "summary.json")}
    for rd in sorted((p for p in sd.iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        res = load(rd / "result.json", {})
        metrics = [json.loads(l) for l in (rd / "metrics.jsonl").read_text().splitlines() if l.strip()] \
            if (rd / "metrics.jsonl").exists() else []
        train = [m for m in metrics if "loss" in m]
        after = [m for m in train if m.get("step", 0) > warm and m.get("tokens")]
        base = [m for m in train if m.get("step", 0) <= warm and m.get("tokens")]
        tps = [m["tokens_per_s"] for m in after if m.get("tokens_per_s")]
        dts = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(after, after[1:]) if b["step"] == a["step"] + 1]
        final = res.get("final") or {}
        backend = res.get("backend") or rd.name.split("-")[1]
        proc = next((round(t["ms"] / 1000, 2) for t in times if Path(t["run_dir"]).resolve() == rd.resolve()), None)
        last10 = [m["loss"] for m in train[-10:]]
        row = {"job": f"{sweep}/{rd.name}", "backend": backend, "status": res.get("status", "no result.json"),
               "exit_code": res.get("exit_code"), "steps": final.get("steps"),
               "step1_loss": next((m["loss"] for m in train if m.get("step") == 1), None),
               "first_loss": final.get("first_loss"), "last_loss": final.get("last_loss"),
               "mean_loss_last10": round(sum(last10) / len(last10), 4) if last10 else None,
               "trainable_parameters": res.get("trainable_parameters"),
               "tokens_per_s_median": statistics.median(tps) if tps else None,
               "tokens_per_s_overall": round((after[-1]["tokens"] - base[-1]["tokens"]) /
                                             (after[-1]["elapsed_s"] - base[-1]["elapsed_s"]), 1)
               if after and base and after[-1]["elapsed_s"] > base[-1]["elapsed_s"] else None,
               "s_per_step_median": round(statistics.median(dts), 4) if dts else None,
               "loop_s": train[-1]["elapsed_s"] if train else None,
               "peak_memory_mb": res.get("peak_memory_mb"), "wall_s": res.get("wall_seconds"),
               "train_seconds": res.get("train_seconds"), "worker_seconds": res.get("worker_seconds"),
               "engine_process_s": proc, "tokens_at_end": train[-1].get("tokens") if train else None,
               "error": (res.get("error") or "").splitlines()[0][:300] if res.get("error") else None}
        rows.append(row)
        log_tail = ""
        for name in ("stderr.log", "stdout.log"):
            p = rd / "logs" / name
            if p.exists():
                log_tail += f"--- {name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:]) + "\n"
        summary["jobs"][row["job"]] = {"row": row, "versions": res.get("versions"), "hardware": res.get("hardware"),
                                       "engine_version": res.get("engine_version"), "error": res.get("error"),
                                       "error_type": res.get("error_type"), "traceback": res.get("traceback"),
                                       "log_tail": log_tail if row["status"] != "succeeded" else None,
                                       "metrics": metrics}
summary["tt_python_times"] = times
(out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
with open(out / "summary.tsv", "w") as f:
    f.write("\t".join(cols) + "\n")
    for r in rows:
        f.write("\t".join("" if r[c] is None else str(r[c]) for c in cols) + "\n")
print((out / "summary.tsv").read_text())
EOF
# per job: the small files (no weights), each sweep's summary.json, the console logs
( cd "$WORK/runs" && find . -maxdepth 4 \( -name result.json -o -name metrics.jsonl -o -name config.yaml \
    -o -name stats.json -o -name summary.json -o -name outer.json -o -path '*/plan/*.yaml' -o -path '*/plan/*.json' \
    -o -path '*/plan/run.sh' -o -path '*/logs/*.log' \) -print0 \
  | tar czf "$OUT/jobs.tar.gz" --null -T - -C "$WORK" $(cd "$WORK" && ls *.console.log tt-python.times 2>/dev/null) )
ls -la "$OUT"
say "done"
