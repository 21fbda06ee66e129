"""Plain TRL as a user would write it, TRL's own defaults (no packing, max_length 1024, gradient checkpointing
on, the model loaded as saved), LoRA r16 alpha16 on every linear layer: the baseline of bench/gpu_unsloth.sh.
Writes metrics.jsonl rows like anytune's worker (tokens = non-padding tokens seen; tokens_per_s between rows;
peak_memory_mb; elapsed_s from train begin) and result.json.
usage: python trl_plain.py MODEL_DIR CHAT_JSONL OUT_DIR [BATCH] [STEPS]"""
import json
import os
import sys
import time

T0 = time.time()
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

model, data, out = sys.argv[1:4]
batch, steps = (int(sys.argv[4]) if len(sys.argv) > 4 else 8), (int(sys.argv[5]) if len(sys.argv) > 5 else 60)
os.makedirs(out, exist_ok=True)
rows = [json.loads(line) for line in open(data) if line.strip()]


class Metrics(TrainerCallback):
    """One metrics.jsonl row per logged step."""

    def on_train_begin(self, args, state, control, **kw):
        self.start = self.last_t = time.time()
        self.last_tok = 0
        print(f"TRAIN_BEGIN first step after {self.start - T0:.1f}s", flush=True)

    def on_log(self, args, state, control, logs=None, **kw):
        if "loss" not in (logs or {}):
            return
        now, tok = time.time(), int(state.num_input_tokens_seen or 0)
        row = {"step": state.global_step, "loss": logs["loss"], "tokens": tok,
               "tokens_per_s": round((tok - self.last_tok) / (now - self.last_t), 1),
               "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "elapsed_s": round(now - self.start, 3)}
        self.last_tok, self.last_t = tok, now
        with open(os.path.join(out, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")


args = SFTConfig(output_dir=os.path.join(out, "checkpoints"), per_device_train_batch_size=batch, max_steps=steps,
                 learning_rate=2e-4, logging_steps=1, report_to="none", save_strategy="no", seed=42,
                 include_num_input_tokens_seen="non_padding",  # to count tokens/s, as anytune does
                 **({} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}))  # a CPU dry run
trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list([{"messages": r["messages"]} for r in rows]),
                     peft_config=LoraConfig(r=16, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
                     callbacks=[Metrics()])
t = time.time()
result = trainer.train()
json.dump({"train_loss": result.training_loss, "train_seconds": round(time.time() - t, 2),
           "wall_seconds": round(time.time() - T0, 2), "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
           "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
           "settings": {"packing": args.packing, "max_length": args.max_length,
                        "gradient_checkpointing": getattr(args, "activation_checkpointing", args.gradient_checkpointing),
                        "bf16": args.bf16, "optim": str(args.optim)}},
          open(os.path.join(out, "result.json"), "w"), indent=1)
