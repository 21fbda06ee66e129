#!/usr/bin/env bash
# Download, into DIR (default .whl-ax), what the lent GPU machine's image (Python 3.12, torch 2.11, transformers
# 5.17) lacks to run Axolotl 0.19.0 with its own pins (transformers 5.16.1, trl 1.9.0, peft 0.20.0, datasets 4.8.4,
# accelerate 1.13.0): the modules an Axolotl LoRA/QLoRA job imports (found by running one on CPU in a venv holding
# only the image's packages), slimmed to fit the 64 MiB one call carries (about 40 MB). Two imports are left to
# stand-ins in bench/stubs/ instead: numba (its llvmlite is 58 MB; Axolotl needs it only for multipack, which
# anytune leaves off) and wandb (20 MB plus an OpenTelemetry stack; anytune never logs to it).
# Run from the project root, then: echo /.whl-ax/ >> .git/info/exclude
set -euo pipefail
dir=${1:-.whl-ax}; mkdir -p "$dir"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" \
  axolotl==0.19.0 transformers==5.16.1 trl==1.9.0 peft==0.20.0 datasets==4.8.4 accelerate==1.13.0 \
  huggingface_hub==1.17.0 bitsandbytes==0.50.2 torchao==0.17.0 liger_kernel==0.8.1 kernels==0.16.2 \
  kernels_data==0.16.2 mistral_common==1.11.5 pydantic_extra_types==2.11.1 pycountry==26.2.16 pillow==13.0.0 \
  evaluate==0.4.1 fastcore==2.2.41 fire==0.7.1 termcolor==3.3.0 colorama==0.4.6 addict==2.4.0 art==6.5 \
  posthog==6.7.11 backoff==2.2.1 distro==1.9.0 six==1.17.0 tabulate==0.10.0 platformdirs==4.14.9 \
  protobuf==7.36.2 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 zstandard==0.22.0 aiohttp==3.14.5 \
  aiosignal==1.4.0 aiohappyeyeballs==2.7.1 frozenlist==1.8.0 multidict==7.2.1 propcache==0.5.4 yarl==1.25.1
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
