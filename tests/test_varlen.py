"""Attention over packed rows (plugins/hftrainer/varlen.py): the same values as SDPA over transformers'
block-diagonal mask, and as each sequence run on its own; the TRL plan loads its model with it when packing."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from plugins.hftrainer import varlen  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "core" / "assets" / "tiny-llama"


@pytest.fixture(scope="module")
def models():
    from transformers import AutoModelForCausalLM

    varlen.register()
    return {name: AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32, attn_implementation=name).eval()
            for name in ("sdpa", varlen.NAME)}


def packed(lengths, vocab, seed=0):
    """One flattened row of sequences of ``lengths``, with position ids restarting at each."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (1, sum(lengths)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    return ids, pos


def test_packed_row_equals_block_mask_and_separate_sequences(models):
    lengths = [7, 1, 12, 5]
    vocab = models["sdpa"].config.vocab_size
    ids, pos = packed(lengths, vocab)
    with torch.no_grad():
        ours = models[varlen.NAME](input_ids=ids, position_ids=pos).logits
        # transformers builds the block-diagonal mask only without a cache (as in training: TRL sets use_cache off)
        block = models["sdpa"](input_ids=ids, position_ids=pos, use_cache=False).logits
        alone = torch.cat([models["sdpa"](input_ids=part).logits
                           for part in ids.split(lengths, dim=1)], dim=1)
    assert (ours - block).abs().max() < 1e-5
    assert (ours - alone).abs().max() < 1e-5
    # and it is not the unmasked attention over the whole row (the test could tell the two apart)
    with torch.no_grad():
        whole = models["sdpa"](input_ids=ids).logits
    assert (ours - whole).abs().max() > 1e-3


def test_collator_boundaries_are_used(models):
    """TRL's collator passes ``cu_seq_lens_q``/``max_length_q``; the kernel uses them, not the position ids."""
    ids, pos = packed([4, 6], models["sdpa"].config.vocab_size, seed=1)
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    q = torch.zeros(1, 2, 10, 8)
    assert varlen.boundaries(q, {"cu_seq_lens_q": cu, "max_length_q": 6})[1] == 6
    found, longest = varlen.boundaries(q, {"position_ids": pos})
    assert found.tolist() == [0, 4, 10] and longest == 6
    assert varlen.boundaries(torch.zeros(2, 2, 10, 8), {"position_ids": pos.expand(2, -1)}) is None


def test_trl_plan_loads_packed_jobs_with_it(tmp_path):
    import json
    import subprocess

    out = {}
    for packing in (True, False):
        run = tmp_path / f"p{packing}"
        subprocess.run([sys.executable, "-m", "core", "offline=true", "plan_only=true", f"method.packing={packing}",
                        f"run_dir={run}"], check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
        out[packing] = json.loads((run / "plan" / "trl_args.json").read_text())["model"]["attn_implementation"]
        assert (run / "plan" / "hfvarlen.py").exists()
    assert out == {True: varlen.NAME, False: "sdpa"}


def test_the_model_trl_builds_attends_with_it(tmp_path, monkeypatch):
    """The engine's side: the plan's own worker (``settings``) loads the model, and transformers' effective
    config of that model names the packed-row attention (not only the plan file)."""
    import importlib.util
    import json
    import subprocess

    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "core", "offline=true", "plan_only=true", "method.packing=true",
                    f"run_dir={run}"], check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1])
    monkeypatch.chdir(run)
    monkeypatch.syspath_prepend(str(run / "plan"))
    spec = importlib.util.spec_from_file_location("planned_trl_worker", run / "plan" / "trl_worker.py")
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    s = worker.settings(json.loads((run / "plan" / "trl_args.json").read_text()))
    model = AutoModelForCausalLM.from_pretrained(s["model"], **s["load"])
    assert model.config._attn_implementation == varlen.NAME
    # TRL then hands the model one flattened row with its boundaries: its trainer turns padding-free on for packing
    # with best-fit-decreasing (SFTTrainer.__init__: padding_free or packing and packing_strategy in bfd, bfd_split)
    assert s["args"].packing and s["args"].packing_strategy in ("bfd", "bfd_split")
