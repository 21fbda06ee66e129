"""How a Hugging Face Trainer + peft job spends GPU memory (``core.MemoryProfile``), for backends on that stack."""
import core

PEFT = core.MemoryProfile(
    activations=0.95, logits=2.0, adapter_input_copy=True, fp32_adapter=True, fp32_master=True,
    source="Hugging Face Trainer + peft profile, fitted on TRL's four H200 1B peaks (core/assets/measured.json)")
"""transformers' Llama under bf16 autocast: bf16 logits at the loss; peft casts each adapted layer's input to the
fp32 adapter and back (a copy per layer, none on a 4-bit base); a full fine-tune keeps fp32 master weights."""
