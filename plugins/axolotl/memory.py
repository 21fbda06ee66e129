"""How an Axolotl job spends GPU memory (``core.MemoryProfile``), fitted on Axolotl's own H200 peaks."""
import core

AXOLOTL = core.MemoryProfile(
    activations=0.811, logits=12.0, adapter_input_copy=False, fp32_adapter=True, fp32_master=True,
    source="Axolotl profile, fitted on Axolotl's three H200 1B peaks (core/assets/measured.json)")
"""Axolotl 0.19 (transformers 5.16, peft 0.20) with its fused LoRA kernels, which it turns on for SFT LoRA/QLoRA on
CUDA. Two terms are set by what the code does, one is fitted:

- ``logits=12``: transformers' ``ForCausalLMLoss`` casts the bf16 logits to fp32 and takes ``cross_entropy``; the
  Trainer drops the model's outputs before ``backward``, whose first step holds the fp32 log-probabilities, the
  loss's fp32 gradient and log-softmax's fp32 gradient at once: 12 bytes per token and vocabulary entry (measured
  on the H200, that loss alone at 16,384 × 128,256: ``F.linear`` under bf16 autocast, ``ForCausalLMLoss``'s steps,
  ``backward``; peak ``max_memory_allocated`` over the inputs 12.0 bytes; 14.0 with the bf16 logits held). TRL's stack
  (its profile: 2) holds far less there; with a 128k vocabulary that is most of the 10.5 GiB Axolotl holds above
  TRL at batch 8 (Axolotl's packs are also padded to ``max_length``, so every row's 2,048 positions count).
- ``adapter_input_copy=False``: the kernels (``axolotl/kernels/lora.py``) compute base and LoRA together in bf16
  and save each projection group's input once, so no cast copy per adapted layer; QLoRA's peak is LoRA's less the
  NF4 weights' saving alone (42.88 against 44.22 GiB), which is what that says. With the kernels off
  (``lora_*_kernel: false``) peft's copies come back: the same profile with the copy gives 54.2 GiB for the
  56.28 measured (−4 %).
- ``activations=0.811``: the one fitted value, the smallest largest error over LoRA at batch 8 and 16 and QLoRA
  (within 0.1 % of each); below TRL's 0.95, since the MLP kernel keeps the gate and up projections and recomputes
  the activation instead of keeping its output and product.
"""
