"""Re-vendor the parts of OpenAI's OpenAPI description the OpenAI backend and its test server use.

Usage: ``python tests/openai_api/vendor_spec.py /path/to/openai-openapi/openapi.json COMMIT``

Keeps the paths of ``PATHS`` (their named methods only) and every component they reference, transitively;
drops the long ``x-oaiMeta`` examples. The source and commit are written into ``info.x-vendored-from``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

PATHS = {
    "/files": ["post"],
    "/files/{file_id}": ["get"],
    "/fine_tuning/jobs": ["post", "get"],
    "/fine_tuning/jobs/{fine_tuning_job_id}": ["get"],
    "/fine_tuning/jobs/{fine_tuning_job_id}/cancel": ["post"],
    "/fine_tuning/jobs/{fine_tuning_job_id}/events": ["get"],
    "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints": ["get"],
    "/chat/completions": ["post"],
}
OUT = Path(__file__).parent / "openapi-fine-tuning.json"


def refs(node, found: set) -> None:
    """Collect every ``#/components/...`` reference under ``node``."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith("#/components/"):
                found.add(v)
            else:
                refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def strip_meta(node):
    """``node`` without ``x-oaiMeta`` (examples in several languages, not needed to validate)."""
    if isinstance(node, dict):
        return {k: strip_meta(v) for k, v in node.items() if k != "x-oaiMeta"}
    if isinstance(node, list):
        return [strip_meta(v) for v in node]
    return node


def main(source: str, commit: str) -> None:
    spec = json.loads(Path(source).read_text())
    paths = {p: {m: strip_meta(spec["paths"][p][m]) for m in methods} for p, methods in PATHS.items()}
    for p in PATHS:  # path-level parameters
        if "parameters" in spec["paths"][p]:
            paths[p]["parameters"] = spec["paths"][p]["parameters"]
    components: dict = {}
    todo: set = set()
    refs(paths, todo)
    done: set = set()
    while todo:
        ref = todo.pop()
        if ref in done:
            continue
        done.add(ref)
        _, _, section, name = ref.split("/", 3)
        node = strip_meta(spec["components"][section][name])
        components.setdefault(section, {})[name] = node
        refs(node, todo)
    out = {
        "openapi": spec["openapi"],
        "info": {**spec["info"], "x-vendored-from": {
            "repository": "https://github.com/openai/openai-openapi", "path": Path(source).name,
            "commit": commit, "kept": {p: m for p, m in PATHS.items()}}},
        "servers": spec.get("servers", []),
        "security": spec.get("security", []),
        "paths": paths,
        "components": {**{s: dict(sorted(v.items())) for s, v in sorted(components.items())},
                       "securitySchemes": spec["components"].get("securitySchemes", {})},
    }
    OUT.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {len(paths)} paths, {sum(len(v) for v in components.values())} components")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
