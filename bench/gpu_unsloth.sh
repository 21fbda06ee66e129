#!/usr/bin/env bash
# The Unsloth backend on the lent GPU, and the benchmark at the shape people train: a random-init
# Llama-3.2-1B shape (vocab 128,256, tied), all 7,473 GSM8K rows as chat, sequence 2,048 with packing,
# LoRA r16 alpha16 on the 7 projections, bf16, AdamW, lr 2e-4, batch 8, 60 steps. Prints the table
# (bench/gpu_table.py) and leaves summary.md/summary.json, env.txt, suite.xml and runs.tar.gz in $OUT.
#
# Runs (each a run directory under $WORK/runs; lanes run side by side on two GPUs when there are two):
#   <engine>_anytune   python -m core backend=<engine> ...         (trl, tt = torchtune, us = unsloth)
#   <engine>_native    the same plan's plan/run.sh, without anytune (a copy of plan/ and data/)
#   trl_plain          bench/trl_plain.py: plain TRL with its own defaults (no packing, checkpointing on)
#   us_qlora, us_gc, us_bs16, trl_bs16, tt_bs16, trl_qlora, tt_qlora: QLoRA, Unsloth's checkpointing on, batch 16
#   ax_anytune, ax_native, ax_qlora, ax_bs16: Axolotl (carry .whl-ax, bench/fetch_axolotl_wheels.sh); ax_nokernel
#     without Axolotl's fused LoRA kernels, ax_mask without its sdpa_varlen; ax_ord, trl_ord: train.shuffle=false
#     (the same packs in the same order on both: their losses step for step); ax_dpo, trl_dpo, ax_orpo, trl_orpo:
#     LoRA DPO/ORPO on the 200 HH-RLHF pairs of data=demo_pref, in order, 25 steps
#   NAME=ENGINE:OVERRIDE,...  any other run: the job above with those overrides ({pref}: the preference pairs)
#   profile            bench/gpu_profile.py at batch 8 and 16: CUDA time by kind of kernel
#   varlen             bench/gpu_varlen.py: anytune's packed-row attention against SDPA (values, milliseconds)
#   suite              Unsloth's conformance suite and GPU tests (pytest -n 6 on one GPU: correctness only)
#
# Prepare here (not on the GPU), from the repository root:
#   printf '/.whl/\n/.whl-us/\n/.whl-tt/\n/.bench/\n/.src/\n' >> .git/info/exclude
#   .whl:    TRL 1.16's side, see bench/gpu_shape.sh;   .whl-us: ../shared/gpu/fetch-wheels.sh .whl-us
#   .whl-tt: torchtune's side, see bench/gpu_compare.sh (torchtune 0.6.1, torchao 0.15.0, ...)
#   .bench:  the GSM8K rows, see bench/gpu_shape.sh
#   .src:    the commit measured: rm -rf .src && mkdir .src && git archive HEAD pyproject.toml README.md core
#            plugins conf tests bench | tar -x -C .src
# then with the device tool (carry .whl .whl-us .whl-tt .bench .src):  OUT=$OUT bash bench/gpu_unsloth.sh
# Settings: STEPS (60) BATCH (8) WARMUP (10) LIMIT (seconds for everything, 570) LANE0/LANE1 (run lists)
#   SUITE_WORKERS (pytest -n, 4) SUITE_LEAVES (seconds the suite leaves for the lane's runs after it, 20)
#   SUITE_K (pytest -k for the suite; default: all but the field checks). An empty LANE1 is written LANE1=" ".
# Seen 2026-11-30: Unsloth's rows are sensitive to a busy host (run them alone or in a pinned lane), and the
# suite at -n 10 needed more than the ~290 s it had (each Unsloth job imports for 30-40 s; every worker
# trains the tiny reference model on CPU first): give it a call of its own.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=${SRC:-$ROOT/.src}; [ -d "$SRC/core" ] || SRC=$ROOT
OUT=${OUT:-/tmp/gpu-out}; W=${WORK:-/tmp/gpu-work}
STEPS=${STEPS:-60}; BATCH=${BATCH:-8}; WARMUP=${WARMUP:-10}; LIMIT=${LIMIT:-570}
LANE0=${LANE0:-"us_anytune us_native trl_anytune trl_native us_qlora us_bs16"}
LANE1=${LANE1:-"suite trl_plain tt_anytune tt_native us_gc trl_bs16"}
PIN=
rm -rf "$W"; mkdir -p "$OUT" "$W/runs"  # a warm machine still holds the last call's runs
T0=$(date +%s)
say() { echo "== [$(( $(date +%s) - T0 ))s] $*"; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
  TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 UNSLOTH_DISABLE_STATISTICS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1

# --- install: each engine's wheels into a site of its own; anytune (from $SRC) beside TRL's -------------
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
# each wheel folder is optional (one call carries 64 MiB): .whl-core (anytune's own needs) or .whl (TRL's side too)
have() { ls "$ROOT/$1"/*.whl > /dev/null 2>&1; }
site=(); for d in .whl-core .whl; do have $d && site+=("$ROOT/$d"/*.whl); done
have .whl-us && site+=("$ROOT"/.whl-us/bitsandbytes-*.whl)
pipi /tmp/site "${site[@]}" && { ! have .whl-us || pipi /tmp/site-us "$ROOT"/.whl-us/*.whl; } \
  && { ! have .whl-tt || pipi /tmp/site-tt "$ROOT"/.whl-tt/*.whl; } && { ! have .whl-ax || pipi /tmp/site-ax "$ROOT"/.whl-ax/*.whl; } \
  || { echo "wheel install failed"; exit 1; }
src=$(mktemp -d); cp -r "$SRC"/pyproject.toml "$SRC"/README.md "$SRC"/core "$SRC"/plugins "$SRC"/conf "$src/"
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site "$src" \
  > "$W/install.log" 2>&1 || { cat "$W/install.log"; exit 1; }
for e in us tt; do printf '#!/bin/sh\nPYTHONPATH=/tmp/site-%s exec python3 "$@"\n' $e > /tmp/$e-python; chmod +x /tmp/$e-python; done
# Axolotl imports its plugin from the run directory (.); bench/stubs stands in for wandb (fetch_axolotl_wheels.sh)
printf '#!/bin/sh\nPYTHONPATH=.:/tmp/site-ax:%s exec python3 "$@"\n' "$ROOT/bench/stubs" > /tmp/ax-python; chmod +x /tmp/ax-python
export PYTHONPATH=/tmp/site ANYTUNE_PYTHON_UNSLOTH=/tmp/us-python ANYTUNE_PYTHON_TORCHTUNE=/tmp/tt-python \
  ANYTUNE_PYTHON_AXOLOTL=/tmp/ax-python ANYTUNE_CREATE_ENVS=0 ANYTUNE_HOME=$W/home AXOLOTL_DO_NOT_TRACK=1
say installed
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; python3 -V
  echo "anytune: $(cat "$SRC/COMMIT" 2>/dev/null || echo working tree)"
  for s in site site-us site-tt site-ax; do echo "--- /tmp/$s"; PYTHONPATH=/tmp/$s python3 -c "
import importlib.metadata as m
for d in ('torch','transformers','peft','accelerate','trl','datasets','unsloth','unsloth_zoo','bitsandbytes','torchtune','torchao','triton','axolotl'):
    try: print(d, m.version(d))
    except m.PackageNotFoundError: pass"; done; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
python3 - > "$W/matmul.json" <<'PY'
import json, torch
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(3): a @ b
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record(); [a @ b for _ in range(50)]; e.record(); torch.cuda.synchronize()
print(json.dumps({"tflops": round(50 * 2 * 8192**3 / (s.elapsed_time(e) / 1e3) / 1e12, 1)}))
PY
say "matmul $(cat $W/matmul.json)"
ROOT=$ROOT TINY=$SRC/tests MODEL=$W/model DIMS=llama1b VOCAB=128256 MAXPOS=4096 DATA=$W/chat.jsonl \
  python3 "$ROOT/bench/gpu_model.py" || { echo "model build failed"; exit 1; }
say "model built"

# --- jobs ----------------------------------------------------------------------------------------
JOB=(offline=true model.name_or_path=$W/model data.train=$W/chat.jsonl method.packing=true peft=lora peft.r=16
     peft.alpha=16 train.max_length=2048 train.max_steps=$STEPS train.precision=bf16 train.device=cuda
     train.learning_rate=2e-4 train.gradient_checkpointing=false train.save_artifacts=false quiet=true)
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
timed() {  # NAME ESTIMATE DIR COMMAND...: run in DIR unless less than ESTIMATE s are left; outer.json
  local name=$1 est=$2 dir=$3; shift 3
  local rd=$W/runs/$name; mkdir -p "$rd"
  if [ "$(left)" -lt "$est" ]; then say "$name skipped ($(left)s left)"; rm -rf "$rd"; return; fi
  say "$name: $*"
  local s=$(date +%s.%N)
  ( while [ ! -s "$rd/metrics.jsonl" ]; do sleep 0.2; done; date +%s.%N > "$rd/first_step_at" ) &
  local watch=$!
  ( cd "$dir" && $PIN timeout -k 10 $(( $(left) - 5 )) "$@" ) > "$W/$name.log" 2>&1
  local rc=$?; kill $watch 2>/dev/null
  python3 -c "import json,time; json.dump({'rc': $rc, 'wall_s': round(time.time() - $s, 1), 'first_step_s': (round(float(open('$rd/first_step_at').read()) - $s, 1) if __import__('os').path.exists('$rd/first_step_at') else None)}, open('$rd/outer.json', 'w'))"
  say "$name: exit $rc"; tail -n 4 "$W/$name.log"
}
anytune() { local name=$1 backend=$2; shift 2
  timed $name 100 "$W" python3 -m core backend=$backend "${JOB[@]}" train.batch_size=$BATCH \
    run_dir=$W/runs/$name hydra.run.dir=$W/runs/$name "$@"; }
native() { local name=$1 from=$W/runs/$2; [ -f "$from/plan/run.sh" ] || { say "$name: no plan in $from"; return; }
  mkdir -p $W/runs/$name; cp -r "$from/plan" "$from/data" "$W/runs/$name/"
  timed $name 90 "$W/runs/$name" sh plan/run.sh; }
run() {
  case $1 in
    us_anytune) anytune us_anytune unsloth ;;          us_native) native us_native us_anytune ;;
    trl_anytune) anytune trl_anytune trl ;;            trl_native) native trl_native trl_anytune ;;
    tt_anytune) anytune tt_anytune torchtune ;;        tt_native) native tt_native tt_anytune ;;
    us_qlora) anytune us_qlora unsloth peft=qlora ;;   us_gc) anytune us_gc unsloth train.gradient_checkpointing=true ;;
    us_bs16) anytune us_bs16 unsloth train.batch_size=16 ;;  trl_bs16) anytune trl_bs16 trl train.batch_size=16 ;;
    tt_bs16) anytune tt_bs16 torchtune train.batch_size=16 ;;  tt_qlora) anytune tt_qlora torchtune peft=qlora ;;
    trl_qlora) anytune trl_qlora trl peft=qlora ;;
    ax_anytune) anytune ax_anytune axolotl ;;          ax_native) native ax_native ax_anytune ;;
    ax_qlora) anytune ax_qlora axolotl peft=qlora ;;   ax_bs16) anytune ax_bs16 axolotl train.batch_size=16 ;;
    ax_nokernel) anytune ax_nokernel axolotl +backend.native.lora_mlp_kernel=false +backend.native.lora_qkv_kernel=false \
                   +backend.native.lora_o_kernel=false ;;
    ax_mask) anytune ax_mask axolotl +backend.native.sdpa_varlen=false ;;
    ax_ord) anytune ax_ord axolotl train.shuffle=false ;;  trl_ord) anytune trl_ord trl train.shuffle=false ;;
    ax_dpo|trl_dpo|ax_orpo|trl_orpo) local e=${1%%_*} m=${1#*_}; [ $e = ax ] && e=axolotl
      anytune $1 $e method=$m method.packing=false data.train=$SRC/core/assets/demo/hh_rlhf_pref.jsonl \
        train.shuffle=false train.max_steps=25 ;;
    ax_suite) say "ax_suite"; ( cd "$SRC" && timeout -k 10 $(( $(left) - ${SUITE_LEAVES:-20} )) python3 -m pytest -v -rfE \
             --tb=short -p no:cacheprovider -n ${SUITE_WORKERS:-4} --timeout 240 --basetemp "$W/pytest-ax" \
             tests/test_conformance.py::TestAxolotl -k "${SUITE_K:-not field}" --junitxml="$OUT/ax-suite.xml" ) \
             > "$W/ax_suite.log" 2>&1; say "ax_suite: exit $?"; grep -E "PASSED|FAILED|ERROR|XFAIL|passed|failed" "$W/ax_suite.log" | tail -n 60 ;;
    *=*) local name=${1%%=*} spec=${1#*=} extra; IFS=, read -ra extra <<< "${spec#*:}"  # NAME=ENGINE:OVERRIDE,...
      anytune $name ${spec%%:*} "${extra[@]//\{pref\}/$SRC/core/assets/demo/hh_rlhf_pref.jsonl}" ;;
    profile) say profile; for b in 8 16; do BATCH=$b MODEL=$W/model PYTHONPATH=/tmp/site timeout 150 python3 "$SRC/bench/gpu_profile.py" 2>&1 | grep -v Loading | tail -n 14; done ;;
    varlen) say varlen; MODEL=$W/model PYTHONPATH=/tmp/site timeout 120 python3 "$SRC/bench/gpu_varlen.py" 2>&1 | tail -n 3 ;;
    trl_plain) timed trl_plain 120 "$W" python3 "$ROOT/bench/trl_plain.py" $W/model $W/chat.jsonl $W/runs/trl_plain $BATCH $STEPS ;;
    suite) say "suite"; ( cd "$SRC" && $PIN timeout -k 10 $(( $(left) - ${SUITE_LEAVES:-20} )) python3 -m pytest -v -rfE \
             --tb=short -p no:cacheprovider -n ${SUITE_WORKERS:-4} --timeout 240 --basetemp "$W/pytest" \
             tests/test_conformance.py::TestUnsloth tests/test_unsloth.py -k "${SUITE_K:-not test_field_reaches_engine}" \
             --junitxml="$OUT/suite.xml" ) > "$W/suite.log" 2>&1; say "suite: exit $?"; grep -E "PASSED|FAILED|ERROR|XFAIL|passed|failed" "$W/suite.log" | tail -n 60
           ( cd $W && find pytest -maxdepth 6 \( -name result.json -o -name metrics.jsonl -o -path '*/logs/*.log' \) -size -2M \
             | tar czf "$OUT/suite-runs.tar.gz" -T - ) ;;
  esac
}
# Two lanes, each on its own GPU and its own half of the CPU cores (taskset): Unsloth's steps are short enough
# that a busy CPU slows them (a first try beside an unpinned 6-worker suite measured a quarter of the speed).
lane() { local cores=; command -v taskset > /dev/null && cores="taskset -c $3"
  for r in $2; do CUDA_VISIBLE_DEVICES=$1 PIN="$cores" run $r; done; }
half=$(( $(nproc) / 2 ))
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then lane 0 "$LANE0" 0-$(( half - 1 )) & lane 1 "$LANE1" $half-$(( 2 * half - 1 )) & wait
else lane 0 "$LANE1 $LANE0" 0-$(( 2 * half - 1 )); fi
say "jobs done"
python3 "$ROOT/bench/gpu_table.py" "$W" "$OUT" "$WARMUP"
( cd $W && tar czf "$OUT/runs.tar.gz" --ignore-failed-read *.log matmul.json model-info.json $(cd $W && find runs -maxdepth 3 \
    \( -name result.json -o -name metrics.jsonl -o -name outer.json -o -name config.yaml -o -name outcome.json \
    -o -path '*/plan/*.json' -o -path '*/plan/*.yaml' -o -path '*/plan/run.sh' -o -path '*/logs/*.log' \) -size -4M) 2>/dev/null )
say done
