"""Build the benchmark model and chat data for the GPU scripts (bench/gpu_trl.sh, bench/gpu_compare.sh).

Environment: ROOT (repository, with .bench/data carried), TINY (folder holding tiny.py; default
ROOT/tests), MODEL (output folder), DIMS (llama1b or tiny), DATA (output messages jsonl), VOCAB (the
model's vocabulary; default 1024, 128256 for Llama 3's), MAXPOS (max_position_embeddings; default 1024).
"""
import json, math, os, sys, time
from pathlib import Path
root = Path(os.environ["ROOT"])
sys.path.insert(0, os.environ.get("TINY") or str(root / "tests"))
import torch
import tiny
tiny.DATA = root / ".bench" / "data"  # the carried slice of ../shared/data (default_corpus reads 2000 + 500 rows)
with open(tiny.DATA / "gsm8k" / "train.jsonl") as f, open(os.environ["DATA"], "w") as out:
    for line in f:
        r = json.loads(line)
        out.write(json.dumps({"messages": [{"role": "user", "content": r["question"]},
                                           {"role": "assistant", "content": r["answer"]}]}) + "\n")
dims = {"llama1b": dict(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, num_kv_heads=8),
        "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)}
t = time.time()
with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init on the GPU: seconds, not minutes
    path = tiny.build_tiny_model(os.environ["MODEL"], vocab_size=int(os.environ.get("VOCAB", 1024)),
                                 max_position_embeddings=int(os.environ.get("MAXPOS", 1024)), **dims[os.environ["DIMS"]])
cfg = json.load(open(path / "config.json"))
from safetensors import safe_open
n = 0  # parameters as saved (tied embeddings once)
for p in path.glob("*.safetensors"):
    with safe_open(str(p), "pt") as f:
        n += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
info = {"model_build_s": round(time.time() - t, 1), "parameters": n, "config": cfg}
print(json.dumps({k: v for k, v in info.items() if k != "config"}))
json.dump(info, open(Path(os.environ["MODEL"]).parent / "model-info.json", "w"))
