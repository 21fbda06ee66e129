"""Ollama exporter worker: writes the Modelfile beside the GGUF. Standard library only (plus ``runproto``).

Usage (from the run directory): ``python plan/export-ollama/ollama_worker.py plan/export-ollama/ollama.json``.
The TEMPLATE was translated and checked when the job was planned; this writes it with FROM, SYSTEM and the
stop parameters. Exits 0, 1 or 130.
"""
from __future__ import annotations

import json
import os
import sys



def modelfile(spec):
    """The Modelfile's text: FROM the GGUF (a path relative to the Modelfile), TEMPLATE, SYSTEM, stops."""
    if '"""' in spec["template"] or '"""' in (spec["system"] or ""):
        raise ValueError('the template or system prompt holds """, which a Modelfile cannot quote')
    lines = [f"FROM ./{os.path.basename(spec['gguf'])}", "", f'TEMPLATE """{spec["template"]}"""']
    if spec["system"]:
        lines.append(f'SYSTEM """{spec["system"]}"""')
    lines += [f"PARAMETER stop {json.dumps(s, ensure_ascii=False)}" for s in spec["stops"]]
    return "\n".join(lines) + "\n"


def main(argv):
    """Write the Modelfile described by ``argv[1]``; record it; exit 0, 1 (failed) or 130 (interrupted)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import runproto  # shipped beside this file

    spec = runproto.read_json(argv[1])
    outcome = runproto.Outcome(())
    with outcome as out:
        if not os.path.isfile(spec["gguf"]):
            raise FileNotFoundError(f"{spec['gguf']} does not exist (export=[gguf] did not write it)")
        runproto.atomic_write_text(spec["modelfile"], modelfile(spec))
        out["artifacts"] = {"ollama": runproto.local_artifact(spec["modelfile"], gguf=spec["gguf"])}
    return outcome.code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
