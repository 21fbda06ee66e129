"""hfvarlen on the GPU: one packed row of GSM8K-length sequences through a Llama-3.2-1B-shaped attention layer
stack, bf16; forward and backward of anytune_varlen (PyTorch's flash varlen kernel) against SDPA over each
sequence alone and over transformers' block-diagonal mask; prints max differences and milliseconds.
Environment: MODEL (a model folder, as bench/gpu_model.py builds it)."""
import json, os, sys, time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from plugins.hftrainer import varlen  # noqa: E402

varlen.register()
g = torch.Generator().manual_seed(0)
lengths = torch.randint(100, 700, (80,), generator=g).tolist()
lengths = lengths[: next(i for i in range(len(lengths)) if sum(lengths[: i + 1]) > 16384)]
ids = torch.randint(0, 128000, (1, sum(lengths)), generator=g).cuda()
pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0).cuda()
out = {"tokens": sum(lengths), "sequences": len(lengths)}
res = {}
for name in (varlen.NAME, "sdpa"):
    m = AutoModelForCausalLM.from_pretrained(os.environ["MODEL"], dtype=torch.bfloat16, attn_implementation=name).cuda()
    m.train()
    for rep in range(3):
        m.zero_grad(set_to_none=True)
        torch.cuda.synchronize(); t = time.time()
        logits = m(input_ids=ids, position_ids=pos, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
        loss.backward()
        torch.cuda.synchronize()
        out[f"{name}_ms"] = round((time.time() - t) * 1e3, 1)
    res[name] = (loss.item(), m.model.layers[0].self_attn.q_proj.weight.grad.float().clone(), logits[0, :64].float())
    del m, logits; torch.cuda.empty_cache()
a, b = res[varlen.NAME], res["sdpa"]
out.update(loss_varlen=a[0], loss_sdpa=b[0], loss_diff=abs(a[0] - b[0]),
           grad_rel=((a[1] - b[1]).norm() / b[1].norm()).item(), logits_maxdiff=(a[2] - b[2]).abs().max().item(),
           torch=torch.__version__)
print("VARLEN", json.dumps(out))
