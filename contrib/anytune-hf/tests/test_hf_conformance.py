"""anytune's conformance suite on backend ``hf``: one class. Run ``pytest`` here, with anytune and this
package installed (anytune's pytest plugin loads by itself); ``tests/fields_hf.py`` says how to read
the engine's own configuration, and ``gaps`` the backend's known gaps, each a strict xfail.
"""
from fields_hf import HfFields

from core.conformance import BackendConformance, notimpl


class TestHf(HfFields, BackendConformance, backend="hf"):
    """The whole suite on ``hf``. SFT only: what its capability table leaves out is declared here."""

    gaps = [
        notimpl("test_job[sft_packing]", "test_accepts[method.packing=True]",
                "test_job[dpo]", "test_job[orpo]", "test_accepts[method.name=dpo]", "test_accepts[method.name=orpo]",
                "test_accepts[data.kind=preference]", "test_accepts[method.loss_type=ipo]",
                "test_accepts[method.loss_type=hinge]",
                reason="the template is SFT only: no packing, no preference methods"),
        notimpl("test_accepts[peft.type=qlora]", reason="the template loads no 4-bit base (bitsandbytes)"),
        notimpl("test_accepts[train.strategy=fsdp]", "test_accepts[train.strategy=deepspeed]",
                reason="the template trains in one process"),
        notimpl("test_accepts[method.name=kto]", "test_accepts[data.kind=unpaired]",
                reason="the template is SFT only: no unpaired preference (KTO)"),
    ]
