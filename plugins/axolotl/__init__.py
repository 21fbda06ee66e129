"""The Axolotl backend: the job becomes an Axolotl YAML (``plan/axolotl.yaml``) that Axolotl itself runs.

Axolotl runs in an environment anytune creates from the versions pinned in ``plugins/axolotl/env.py``
(``python -m core.envs create axolotl``): it pins exact versions of transformers, TRL and peft that clash
with anytune's TRL extra. ``backend.py`` holds the class and its config node, ``translate.py`` the pure
translation, ``plugin.py`` the Axolotl plugin shipped as ``plan/anytune_axolotl.py`` (metrics, checkpoints,
artefacts, the outcome file, unknown keys), ``env.py`` the pins.
"""
import core
from plugins.axolotl.backend import AxolotlBackend


@core.hookimpl
def register_backends(register):
    """Register the Axolotl backend."""
    register(AxolotlBackend)
