"""What anytune knows of llama.cpp without loading it: its file types, and where its converter comes from.

llama.cpp's converter (``convert_hf_to_gguf.py``, its ``conversion`` package and ``gguf-py``) is not in any
wheel: it ships inside the ``llama-cpp-python`` source distribution, which vendors llama.cpp. The exporter takes
it from that sdist, of the same version as the environment's ``llama-cpp-python`` (so the converter, the
``gguf`` writer and the runtime that loads the file agree), extracted once into ``$ANYTUNE_HOME/llama.cpp/<v>/``
and copied into each plan (an ejected plan converts without anytune or a download).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from core import AnytuneError, envs

VERSION = "0.3.36"
"""llama-cpp-python pinned in the exporter's environment; its sdist vendors the converter used."""
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
"""Output types llama.cpp's converter writes itself (``--outtype``)."""
QUANT_TYPES = {
    "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13,
    "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25, "iq4_xs": 30,
}
"""Quantisations made from an f16 file by ``llama_model_quantize`` (name -> ``LLAMA_FTYPE_MOSTLY_*`` of llama.h
in the vendored llama.cpp; a test checks each against the installed ``llama_cpp``)."""
NEEDS_IMATRIX = ("iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq3_xxs", "iq3_xs", "iq3_s", "iq3_m",
                 "q2_k_s")
"""llama.cpp's types that need an importance matrix (from calibration text), which the exporter does not make."""
MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "include/llama.h", "LICENSE")
"""What the converter needs from ``vendor/llama.cpp/`` in the sdist."""


def outtypes() -> list[str]:
    """Every ``export.gguf.outtype`` accepted."""
    return [*CONVERTER_TYPES, *[q for q in QUANT_TYPES if q not in CONVERTER_TYPES]]


def source_dir() -> Path:
    """Folder of the converter extracted from the sdist: ``$ANYTUNE_HOME/llama.cpp/<VERSION>`` (beside ``envs/``)."""
    return envs.home().parent / "llama.cpp" / VERSION


def converter(console=None) -> Path:
    """The converter's folder (``convert_hf_to_gguf.py``, ``conversion/``, ``gguf-py/``), fetched once.

    The sdist comes through pip (``pip download --no-binary :all:``), so the user's pip configuration, and a
    wheel directory (``$ANYTUNE_WHEELS``, which then must hold the sdist), apply; only the files above are kept.
    :raises AnytuneError: pip could not get the sdist.
    """
    out = source_dir()
    if (out / "convert_hf_to_gguf.py").is_file():
        return out
    with envs.flock(out.with_name(out.name + ".lock")):
        if (out / "convert_hf_to_gguf.py").is_file():
            return out
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            wheels = envs.wheels_dir(None)
            offline = ["--no-index", "--find-links", str(wheels)] if wheels else []
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", *offline,
                   f"llama-cpp-python=={VERSION}", "-d", tmp]
            if console is not None:
                console.print(f"gguf: fetching llama.cpp's converter (llama-cpp-python {VERSION} sdist) into {out}",
                              markup=False, highlight=False)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            if proc.returncode != 0 or not sdists:
                raise AnytuneError(f"export=[gguf] needs llama.cpp's converter from the llama-cpp-python {VERSION} "
                                   f"source distribution, and pip could not get it:\n$ {' '.join(cmd)}\n"
                                   f"{(proc.stdout + proc.stderr).strip()[-1500:]}")
            staging = Path(tmp) / "src"
            with tarfile.open(sdists[0]) as tar:
                root = f"{tar.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
                picked = [m for m in tar.getmembers() if m.name.startswith(root) and any(
                    m.name[len(root):] == p or (p.endswith("/") and m.name[len(root):].startswith(p)) for p in MEMBERS)
                    and (m.isfile() or m.isdir())]
                for m in picked:
                    m.name = m.name[len(root):]
                tar.extractall(staging, members=picked, filter="data")
            if not (staging / "convert_hf_to_gguf.py").is_file():
                raise AnytuneError(f"{sdists[0].name} has no vendor/llama.cpp/convert_hf_to_gguf.py")
            shutil.rmtree(out, ignore_errors=True)
            os.replace(staging, out)
    return out
