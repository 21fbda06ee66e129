"""The Axolotl environment's pins, per Python version (Axolotl 0.20+ needs Python >= 3.12)."""
from __future__ import annotations

import sys

PY311 = ["torch==2.13.0", "axolotl==0.19.0", "transformers==5.16.1", "trl==1.9.0", "peft==0.20.0",
         "datasets==4.8.4", "accelerate==1.13.0"]
"""Axolotl 0.19.0, the last release for Python 3.11, with the exact versions it pins (the tested set)."""
PY312 = ["torch==2.13.0", "axolotl==0.21.0", "transformers==5.20.1", "trl==1.14.1", "peft==0.21.2"]
"""Axolotl 0.21.0 on Python >= 3.12 (its own exact pins; not tested on this project's CI, which runs 3.11)."""


def requirements(version: tuple[int, int] | None = None) -> list[str]:
    """The pins for ``version`` (default: this interpreter's)."""
    version = version or sys.version_info[:2]
    return list(PY312 if version >= (3, 12) else PY311)
