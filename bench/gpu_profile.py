"""Where a step of the benchmark job goes on the GPU: the Llama-3.2-1B shape (MODEL, as bench/gpu_model.py builds
it) with LoRA r16 on the 7 projections (peft), bf16, one packed row of BATCH x 2048 tokens through anytune_varlen,
token cross-entropy, AdamW; torch.profiler over STEPS steps after 3 warm-up steps. Prints the step time, the
CUDA time by kind of kernel (matrix multiplies, attention, cross-entropy and softmax, the rest) and the top kernels."""
import collections, json, os, sys, time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plugins.hftrainer import varlen  # noqa: E402

batch, steps = int(os.environ.get("BATCH", 8)), int(os.environ.get("STEPS", 3))
model = AutoModelForCausalLM.from_pretrained(os.environ["MODEL"], dtype=torch.bfloat16,
                                             attn_implementation=varlen.register()).cuda()
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
g = torch.Generator().manual_seed(0)
lengths, total = [], batch * 2048
while sum(lengths) < total:
    lengths.append(min(int(torch.randint(100, 700, (1,), generator=g)), total - sum(lengths)))
ids = torch.randint(0, 128000, (1, total), generator=g).cuda()
pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).cuda()


def step():
    out = model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False)
    out.loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)


for _ in range(3):
    step()
torch.cuda.synchronize(); t = time.time()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
wall = (time.time() - t) / steps


def kind(name):
    n = name.lower()
    if any(k in n for k in ("gemm", "cutlass", "nvjet", "sm90_xmma", "matmul", "cublas")):
        return "matmul"
    if "flash" in n or "fmha" in n or "attention" in n:
        return "attention"
    if any(k in n for k in ("softmax", "nll", "cross_entropy", "log_softmax", "logsumexp")):
        return "cross-entropy/softmax"
    return "other (elementwise, norms, rotary, copies, optimiser)"


by = collections.Counter()
kernels = [(e.key, e.device_time_total) for e in prof.key_averages() if e.device_time_total > 0]
for name, us in kernels:
    by[kind(name)] += us
busy = sum(by.values()) / steps / 1e6
print("PROFILE", json.dumps({"batch": batch, "tokens": total, "step_s": round(wall, 4), "gpu_busy_s": round(busy, 4),
                             "tokens_per_s": round(total / wall), "by_kind_ms": {k: round(v / steps / 1e3, 1)
                                                                                  for k, v in by.most_common()}}))
for name, us in sorted(kernels, key=lambda x: -x[1])[:12]:
    print(f"  {us / steps / 1e3:8.1f} ms  {kind(name)[:12]:12}  {name[:110]}")
