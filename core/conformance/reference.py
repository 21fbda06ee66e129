"""The conformance suite's independent reference: tokens, loss masks and losses from plain transformers
and torch, never from anytune's own tokenise-and-mask code (``core.lossmask``) or a run's files.

- Tokens and masks (:class:`Reference`): conversations through transformers' own assistant-token mask
  (``apply_chat_template(..., return_assistant_tokens_mask=True)``) with :data:`GENERATION_CHATML`, a
  ChatML template whose assistant turns are wrapped in ``{% generation %}`` markers; prompt/completion
  and text records by the rule stated in ``docs/data.md`` (the completion, then the end-of-sequence
  token, carries loss; a text carries loss on every token and ends with the end-of-sequence token).
  ``tests/golden_masks.json`` holds hand-checked token ids and masks that this module and
  ``core.lossmask`` must both reproduce.
- Losses: one unpadded forward per example in float32, labels shifted as Hugging Face models do;
  per-example means, the token mean of a batch, a DPO loss and margins against the base model.
- :func:`sft_curve`: a full fine-tune written out in plain torch (AdamW, linear decay, clipping,
  gradient accumulation that averages over the loss tokens of the whole step), the curve an engine
  must reproduce step by step.
- :func:`train_tiny`: the shipped tiny Llama trained briefly on the demo conversations, so that its
  predictions carry information (a random-init model's loss is near ln(vocab) whichever tokens carry it).

Only tests import this module (torch and transformers are imported inside functions).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

GENERATION_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' and message.get('weight', 1) != 0 %}"
    "{% if message.get('train_spans') is none %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endgeneration %}"
    "{% else %}{% set ns = namespace(pos=0) %}{% for span in message['train_spans'] %}"
    "{{ message['content'][ns.pos:span[0]] }}{% generation %}{{ message['content'][span[0]:span[1]] }}"
    "{% endgeneration %}{% set ns.pos = span[1] %}{% endfor %}{{ message['content'][ns.pos:] }}"
    "{% if message['train_spans'] %}{% generation %}{{ '<|im_end|>' + '\n' }}{% endgeneration %}"
    "{% else %}{{ '<|im_end|>' + '\n' }}{% endif %}{% endif %}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
"""ChatML (the tiny model's template) with each assistant turn, its ``<|im_end|>`` and newline inside
``{% generation %}``: what transformers marks as assistant tokens is what carries loss. A turn with
``weight: 0`` has no generation block; a turn with ``train_spans`` has one per trained character range of its
content, and one around its ``<|im_end|>`` and newline when it has any (the rule ``docs/data.md`` states)."""

DEMO_SFT = "demo/gsm8k_sft.jsonl"
"""Demo conversations (shipped asset) the suite trains on."""
DEMO_PREF = "demo/hh_rlhf_pref.jsonl"
"""Demo preference pairs (shipped asset)."""


@dataclass(frozen=True)
class Encoded:
    """One example: token ids and the loss mask (1 = the token is a target that carries loss)."""

    ids: list[int]
    mask: list[int]


class Reference:
    """Reference tokenisation for the conformance model (the tiny Llama's tokenizer and ChatML).

    :param model_path: a model directory whose tokenizer renders conversations exactly as
        :data:`GENERATION_CHATML` does (checked for every conversation encoded).
    :param max_length: examples are cut to their first ``max_length`` tokens.
    """

    def __init__(self, model_path: str | Path, max_length: int = 512):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.max_length = max_length
        self.eos = self.tokenizer.eos_token or ""

    def _chat(self, messages: list[dict], add_generation_prompt: bool = False) -> dict:
        own = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        ours = self.tokenizer.apply_chat_template(messages, tokenize=False, chat_template=GENERATION_CHATML,
                                                  add_generation_prompt=add_generation_prompt)
        if own != ours:
            raise ValueError("the model's chat template renders differently from the reference's ChatML; the "
                             "conformance reference supports the tiny Llama's ChatML only")
        return self.tokenizer.apply_chat_template(messages, chat_template=GENERATION_CHATML, tokenize=True,
                                                  return_dict=True, return_assistant_tokens_mask=True,
                                                  add_generation_prompt=add_generation_prompt)

    def _cut(self, ids: Sequence[int], mask: Sequence[int]) -> Encoded:
        return Encoded(list(ids)[: self.max_length], [int(m) for m in mask][: self.max_length])

    def encode(self, kind: str, record: dict, completion_only: bool = True) -> Encoded:
        """Tokens and loss mask of one SFT record (``messages``, ``prompt_completion`` or ``text``)."""
        if kind == "messages":
            out = self._chat(record["messages"])
            ids, mask = out["input_ids"], out["assistant_masks"]
        elif kind == "prompt_completion":
            text = record["prompt"] + record["completion"] + self.eos
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            start = len(record["prompt"])  # a token belongs to the completion if it starts inside it
            mask = [int(a >= start and b > a) for a, b in enc["offset_mapping"]]
        elif kind == "text":
            ids = self.tokenizer(record["text"] + self.eos, add_special_tokens=False)["input_ids"]
            mask = [1] * len(ids)
        else:
            raise ValueError(f"no SFT reference for record kind {kind!r}")
        return self._cut(ids, mask if completion_only else [1] * len(ids))

    def encode_preference(self, record: dict) -> dict[str, Encoded]:
        """``chosen`` and ``rejected``: the prompt and the answer, the answer's tokens (after the prompt
        rendered with its generation prompt) carrying loss."""
        prompt = self._chat(record["prompt"], add_generation_prompt=True)["input_ids"]
        out = {}
        for side in ("chosen", "rejected"):
            ids = self._chat(record["prompt"] + record[side])["input_ids"]
            if list(ids[: len(prompt)]) != list(prompt):
                raise ValueError("the prompt's tokens are not a prefix of the prompt and answer's")
            out[side] = self._cut(ids, [0] * len(prompt) + [1] * (len(ids) - len(prompt)))
        return out


# -- data ---------------------------------------------------------------------------------------------


def demo_rows(name: str = DEMO_SFT, rows: int | None = None) -> list[dict]:
    """The first ``rows`` records of a shipped demo file (as the user's file holds them)."""
    from core.config import asset

    with open(asset(name), encoding="utf-8") as f:
        out = [json.loads(line) for line in f if line.strip()]
    return out[:rows]


def records_of_kind(kind: str, rows: int) -> list[dict]:
    """``rows`` SFT records of ``kind`` made from the demo conversations (question, answer).

    ``unpaired``: question, answer and a boolean label (KTO). ``weighted``: two questions and answers per conversation, as a user's file holds them: the first
    answer ``weight: 0`` (OpenAI), the second as two content parts, the first (up to its first space) marked
    ``train: false`` (Axolotl).
    """
    out = []
    if kind == "weighted":
        demo = demo_rows(DEMO_SFT, 2 * rows)
        for first, second in zip(demo[::2], demo[1::2]):
            a2 = second["messages"][1]["content"]
            cut = a2.index(" ")
            out.append({"messages": [
                first["messages"][0], {**first["messages"][1], "weight": 0}, second["messages"][0],
                {"role": "assistant", "content": [{"type": "text", "text": a2[:cut], "train": False},
                                                  {"type": "text", "text": a2[cut:]}]}]})
        return out
    for row in demo_rows(DEMO_SFT, rows):
        q, a = row["messages"][0]["content"], row["messages"][1]["content"]
        if kind == "messages":
            out.append(row)
        elif kind == "prompt_completion":
            out.append({"prompt": f"Question: {q}\nAnswer:", "completion": f" {a}"})
        elif kind == "text":
            out.append({"text": f"Question: {q}\nAnswer: {a}"})
        elif kind == "unpaired":  # KTO: every other answer marked undesirable
            out.append({"prompt": q, "completion": a, "label": len(out) % 2 == 0})
        else:
            raise ValueError(kind)
    return out


def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    """Write ``records`` as a JSONL file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


# -- losses -------------------------------------------------------------------------------------------


def load_model(path: str | Path, adapter: str | Path | None = None):
    """A model in float32 for evaluation: ``path`` (a full model), with a PEFT ``adapter`` on top if given."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval()


def nll(model, example: Encoded) -> tuple[float, int]:
    """(sum of the negative log-likelihoods of the example's loss tokens, their number); token ``t`` is
    predicted from tokens ``< t``, so the first token is never a target."""
    import torch

    ids = torch.tensor(example.ids)
    targets = torch.where(torch.tensor(example.mask).bool(), ids, torch.tensor(-100))[1:]
    with torch.no_grad():
        logits = model(ids[None]).logits[0, :-1].float()
    total = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    return float(total), int((targets != -100).sum())


def example_losses(model, examples: Sequence[Encoded]) -> list[float]:
    """Mean loss over each example's loss tokens."""
    out = []
    for ex in examples:
        total, count = nll(model, ex)
        out.append(total / count)
    return out


def token_mean(model, examples: Sequence[Encoded]) -> float:
    """Mean loss over all loss tokens of ``examples`` (what one training step over them reports)."""
    sums = [nll(model, ex) for ex in examples]
    return sum(s for s, _ in sums) / sum(c for _, c in sums)


def sequence_logp(model, example: Encoded) -> float:
    """Sum of the log-probabilities of the example's loss tokens."""
    total, _ = nll(model, example)
    return -total


def dpo(policy, base, pairs: Sequence[dict[str, Encoded]], beta: float) -> tuple[float, float]:
    """(mean sigmoid DPO loss, mean chosen-minus-rejected reward margin) of ``policy`` against ``base``
    (the reference model) over preference ``pairs``: margin = beta * (log-ratio of chosen - of rejected)."""
    losses, margins = [], []
    for pair in pairs:
        ratio = {side: sequence_logp(policy, pair[side]) - sequence_logp(base, pair[side])
                 for side in ("chosen", "rejected")}
        margin = beta * (ratio["chosen"] - ratio["rejected"])
        margins.append(margin)
        losses.append(math.log1p(math.exp(-margin)))  # -log(sigmoid(margin))
    return sum(losses) / len(losses), sum(margins) / len(margins)


def orpo(model, pairs: Sequence[dict[str, Encoded]], beta: float) -> float:
    """ORPO loss of ``model`` over preference ``pairs`` (one batch): the token-mean NLL of the chosen answers
    minus ``beta`` times the mean log-sigmoid of the log odds ratio of the answers' mean token log-probabilities."""
    chosen = [nll(model, p["chosen"]) for p in pairs]
    rejected = [nll(model, p["rejected"]) for p in pairs]
    loss = sum(s for s, _ in chosen) / sum(c for _, c in chosen)
    ratios = []
    for (cs, cn), (rs, rn) in zip(chosen, rejected):
        lc, lr = -cs / cn, -rs / rn
        log_odds = (lc - lr) - (math.log(-math.expm1(lc)) - math.log(-math.expm1(lr)))
        ratios.append(-math.log1p(math.exp(-log_odds)))  # log(sigmoid(log_odds))
    return loss - beta * sum(ratios) / len(ratios)


def trainable_parameters(model_path: str | Path, peft: Any) -> int:
    """Trainable parameters of the reference setup: peft's LoRA/DoRA on the base, or every weight."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_path))
    if peft.type != "none":
        from peft import LoraConfig, get_peft_model

        targets = list(peft.target_modules)
        model = get_peft_model(model, LoraConfig(
            r=peft.r, lora_alpha=peft.alpha, use_dora=peft.type == "dora",
            target_modules="all-linear" if targets == ["all-linear"] else targets))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- a whole training curve, in plain torch -------------------------------------------------------------


def sft_curve(model_path: str | Path, examples: Sequence[Encoded], *, batch_size: int, grad_accum: int, steps: int,
              learning_rate: float, max_grad_norm: float = 1.0, weight_decay: float = 0.0):
    """(loss of each optimiser step, the model after the last) of a full fine-tune over ``examples`` in order
    (no shuffling).

    Each step takes ``grad_accum`` micro-batches of ``batch_size`` examples; its loss, and the gradient,
    is the mean over the loss tokens of the whole step. Then: gradient clipping to ``max_grad_norm``,
    torch's AdamW (betas 0.9/0.999, eps 1e-8) at ``learning_rate * (steps - s) / steps`` for step ``s``
    (linear decay from the first step, no warm-up).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    per_step = batch_size * grad_accum
    if len(examples) < steps * per_step:
        raise ValueError(f"{steps} steps of {per_step} examples need {steps * per_step}; got {len(examples)}")
    losses = []
    for s in range(steps):
        step = examples[s * per_step:(s + 1) * per_step]
        tokens = sum(sum(ex.mask[1:]) for ex in step)
        total = 0.0
        for ex in step:
            ids = torch.tensor(ex.ids)
            targets = torch.where(torch.tensor(ex.mask).bool(), ids, torch.tensor(-100))[1:]
            logits = model(ids[None]).logits[0, :-1].float()
            loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
            (loss / tokens).backward()
            total += float(loss.detach())
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        for group in opt.param_groups:
            group["lr"] = learning_rate * (steps - s) / steps
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total / tokens)
    return losses, model.eval()


# -- the trained tiny model -----------------------------------------------------------------------------


def train_tiny(out_dir: str | Path, steps: int = 100, batch_size: int = 8, learning_rate: float = 1e-2,
               max_length: int = 128, seed: int = 0) -> Path:
    """The shipped tiny Llama trained ``steps`` steps (every token of the first ``max_length`` of each demo
    conversation rendered with its ChatML; AdamW, cosine decay) and saved with the tiny model's tokenizer
    files into ``out_dir``. Its loss on the demo answers falls from ln(1024) = 6.93 to about 4.3.

    Deterministic for a given machine and torch build; a few seconds on two CPU cores.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.config import asset

    src, out = Path(asset("tiny-llama")), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(src))
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in demo_rows(DEMO_SFT)]
    encoded = [tok(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(seed)).tolist()
    pad = tok.pad_token_id
    for s in range(steps):
        batch = [encoded[order[(s * batch_size + i) % len(order)]] for i in range(batch_size)]
        width = max(len(b) for b in batch)
        ids = torch.tensor([b + [pad] * (width - len(b)) for b in batch])
        attn = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch])
        labels = torch.where(attn.bool(), ids, torch.tensor(-100))
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    model.save_pretrained(out)
    for f in src.iterdir():  # the shipped tokenizer files, readable by every engine's transformers
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "config.json":
            shutil.copy(f, out / f.name)
    return out
