#!/usr/bin/env bash
# Download, into DIR (default .whl-ax), what the lent GPU machine's image (Python 3.12, torch 2.11, transformers
# 5.17; its `pip list` of 2026-12-01 is in docs/axolotl.md) lacks to run Axolotl 0.19.0 with its own pins
# (transformers 5.16.1, trl 1.9.0, peft 0.20.0, datasets 4.8.4, accelerate 1.13.0): the modules an Axolotl
# LoRA/QLoRA job imports (found by running one on CPU in a venv holding only the image's packages), slimmed to fit
# the 64 MiB one call carries (about 35 MB). wandb is left to a stand-in in bench/stubs/ (20 MB plus an
# OpenTelemetry stack; Axolotl imports it at module level, anytune never logs to it).
# Run from the project root, then: echo /.whl-ax/ >> .git/info/exclude
set -euo pipefail
dir=${1:-.whl-ax}; mkdir -p "$dir"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" \
  axolotl==0.19.0 transformers==5.16.1 trl==1.9.0 peft==0.20.0 datasets==4.8.4 accelerate==1.13.0 \
  huggingface_hub==1.17.0 bitsandbytes==0.50.2 torchao==0.17.0 liger_kernel==0.8.1 kernels==0.16.2 \
  kernels_data==0.16.2 mistral_common==1.11.5 pydantic_extra_types==2.11.1 pycountry==26.2.16 \
  pydantic==2.12.5 pydantic_core==2.41.5 annotated_types==0.7.0 typing_inspection==0.4.5 \
  evaluate==0.4.1 fastcore==2.2.41 fire==0.7.1 termcolor==3.3.0 addict==2.4.0 art==6.5 \
  posthog==6.7.11 backoff==2.2.1 distro==1.9.0 platformdirs==4.14.9 dill==0.4.1 multiprocess==0.70.19
# Axolotl's contrib packages are published as source only
python3 -m pip wheel -q --no-deps -w "$dir" axolotl-contribs-lgpl==0.0.7 axolotl-contribs-mit==0.0.6
# bitsandbytes: one library per CUDA release; the image runs CUDA 13, so keep cpu, cuda130, cuda132
python3 ../shared/gpu/slim-wheel.py "$dir"/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl \
  'libbitsandbytes_(cuda1[12][0-9]|rocm[0-9]+|xpu[0-9]+)\.so$'
# pycountry's translations (14 of its 21 MB) and mistral_common's bundled Mistral tokenizers (37 MB): training a
# Llama never reads them
python3 ../shared/gpu/slim-wheel.py "$dir"/pycountry-26.2.16-py3-none-any.whl '^pycountry/locales/'
python3 ../shared/gpu/slim-wheel.py "$dir"/mistral_common-1.11.5-py3-none-any.whl '^mistral_common/data/'
du -sh "$dir"
