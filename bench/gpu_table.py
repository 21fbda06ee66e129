"""The table of bench/gpu_unsloth.sh: one row per run directory under WORK/runs (anytune's, a native run of its
plan, or bench/trl_plain.py's). tokens/s = median of the per-step rows after WARMUP steps; MFU = 6 N tokens/s
against 989 TFLOP/s (H100/H200 dense bf16) and against the bf16 matrix rate measured on the machine.
usage: python gpu_table.py WORK OUT [WARMUP]"""
import json
import statistics
import sys
from pathlib import Path

work, out = Path(sys.argv[1]), Path(sys.argv[2])
warm = int(sys.argv[3]) if len(sys.argv) > 3 else 10


def load(path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except Exception:
        return default


n = (load(work / "model-info.json") or {}).get("parameters") or 0
measured = (load(work / "matmul.json") or {}).get("tflops") or 0
rows = []
for rd in sorted(p for p in (work / "runs").iterdir() if p.is_dir()):
    metrics = [json.loads(x) for x in (rd / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (rd / "metrics.jsonl").exists() else []
    train = [m for m in metrics if "loss" in m]
    tps = [m["tokens_per_s"] for m in train if m.get("step", 0) > warm and m.get("tokens_per_s")]
    res = load(rd / "result.json", {}) or load(rd / "outcome.json", {}) or {}
    outer = load(rd / "outer.json", {})
    tok_s = statistics.median(tps) if tps else None
    peak = max((m.get("peak_memory_mb") or 0 for m in train), default=0) or res.get("peak_memory_mb") or 0
    last10 = [m["loss"] for m in train[-10:]]
    rows.append({"run": rd.name, "status": res.get("status") or ("rc " + str(outer.get("rc"))),
                 "steps": len(train), "tokens_per_s": round(tok_s) if tok_s else None,
                 "tokens_per_step": round(statistics.median([b["tokens"] - a["tokens"] for a, b in zip(train, train[1:])]))
                 if len(train) > 1 and train[0].get("tokens") is not None else None,
                 "peak_gib": round(peak / 1024, 2) if peak else None,
                 "mfu_989": round(100 * 6 * n * tok_s / 989e12, 1) if tok_s and n else None,
                 "mfu_measured": round(100 * 6 * n * tok_s / (measured * 1e12), 1) if tok_s and n and measured else None,
                 "first_step_s": outer.get("first_step_s"), "wall_s": outer.get("wall_s"),
                 "loss_first": train[0]["loss"] if train else None, "loss_last": train[-1]["loss"] if train else None,
                 "loss_last10_mean": round(sum(last10) / len(last10), 4) if last10 else None,
                 "trainable": res.get("trainable_parameters"),
                 "error": ((res.get("error") or "").splitlines() or [""])[0][:200] or None})
cols = ["run", "status", "steps", "tokens_per_s", "tokens_per_step", "peak_gib", "mfu_989", "mfu_measured",
        "first_step_s", "wall_s", "loss_first", "loss_last", "loss_last10_mean", "trainable", "error"]
(out / "summary.json").write_text(json.dumps({"parameters": n, "matmul_tflops": measured, "warmup": warm,
                                              "rows": rows}, indent=1))
lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
lines += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print(f"parameters {n:,}; measured bf16 matmul {measured} TFLOP/s; tokens/s = median after step {warm}")
print("\n".join(lines))
