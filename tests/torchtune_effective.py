"""The effective configuration torchtune runs for planned jobs, as JSON (test-side; runs in torchtune's env).

Usage: ``python tests/torchtune_effective.py OUT.json RUN_DIR...`` with torchtune's interpreter
(``python -m core.envs create torchtune``). For each run directory it does what ``tune run
<recipe> --config plan/torchtune.yaml`` does up to the first step: parses the config with
torchtune's own parser, imports the recipe file that ``tune run`` would run, builds the recipe
class with the config and calls its ``setup`` (model, tokenizer, checkpoint, optimiser, schedule,
loss, data loader), with the run directory as working directory and on ``sys.path``. It then reads
what the recipe holds (not what the YAML says): the adapter modules' rank, alpha and dropout, the
optimiser's parameter groups, the schedule's factor at every step, the loss, the data loader's
batch size and order, activation-checkpoint wrappers, the recipe's own attributes (resolved with its
defaults) and the arguments each anytune component received (with that component's defaults).

A job asking for CUDA on a machine without it is set up on the CPU; ``device`` records what it asked.
A plan for several processes (``tune run --nproc_per_node N``) is set up as one of them would be, here in a
process group of one (gloo), its launcher arguments read with torchrun's own parser (``launch``) and its
FSDP2 resharding as the recipe passes it to its model set-up (``reshard_after_forward``).
Imports torchtune, torch and the standard library only.
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import inspect
import io
import json
import os
import sys
from pathlib import Path

import torch
import torchtune
from omegaconf import OmegaConf
from torchtune.config._parse import TuneRecipeArgumentParser
from torchtune.config._utils import _get_component_from_path, _merge_yaml_and_cli_args

RECIPES = Path(torchtune.__file__).resolve().parent.parent / "recipes"
"""Where ``tune run`` finds its built-in recipes."""
PLAN_MODULES = ("plan", "runproto", "lossmask", "chatrender")
"""Modules a plan brings (``plan.anytune_torchtune`` and what it imports): dropped between plans."""


def plain(value):
    """A JSON-able copy of a component argument."""
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return repr(value)


def component_args(node, *positional) -> dict:
    """The arguments a ``_component_`` node's callable receives, its own defaults filled in."""
    fn = _get_component_from_path(node["_component_"])
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_component_"}
    bound = inspect.signature(fn).bind(*positional, **kwargs)
    bound.apply_defaults()
    names = list(inspect.signature(fn).parameters)[:len(positional)]
    return {k: plain(v) for k, v in bound.arguments.items() if k not in names}


def recipe_class(recipe: str):
    """The recipe class of a built-in recipe file, loaded as ``tune run`` loads it (by path)."""
    spec = importlib.util.spec_from_file_location(f"_anytune_recipe_{recipe}", RECIPES / f"{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classes = [v for k, v in vars(module).items() if inspect.isclass(v) and v.__module__ == module.__name__
               and (k.endswith("RecipeSingleDevice") or k.endswith("RecipeDistributed"))]
    assert len(classes) == 1, (recipe, classes)
    module.init_process_group = lambda *a, **k: None  # a distributed recipe joins the group set up here
    cls = classes[0]
    setup_model = cls._setup_model

    def recorded(self, *args, **kwargs):  # what the recipe passes to its model set-up (sharding with one process)
        self.model_setup_kwargs = kwargs
        return setup_model(self, *args, **kwargs)

    cls._setup_model = recorded
    return cls


def launch(command: list[str]) -> dict:
    """Processes per node and nodes of ``tune run``'s launcher arguments, as torchrun's parser (which ``tune run``
    uses) reads them; one process without any."""
    from torch.distributed.run import get_args_parser

    head = command[command.index("run") + 1:]
    if not head or not head[0].startswith("--"):
        return {"nproc_per_node": 1, "nnodes": 1, "world": 1}
    args = get_args_parser().parse_args(head)
    nproc, nnodes = int(args.nproc_per_node), int(str(args.nnodes).split(":")[-1])
    return {"nproc_per_node": nproc, "nnodes": nnodes, "world": nproc * nnodes}


def reshard_after_forward(recipe) -> bool | None:
    """FSDP2's ``reshard_after_forward`` as a distributed recipe passes it to its model set-up (which shards with
    it across two processes or more; a group of one is not sharded); None for a single-device recipe."""
    return getattr(recipe, "model_setup_kwargs", {}).get("reshard_after_forward")


@contextlib.contextmanager
def one_of(world: int):
    """A process group of one (gloo) for a distributed recipe; ``WORLD_SIZE`` says the plan's processes."""
    if world == 1:
        yield
        return
    import torch.distributed as dist

    saved = os.environ.get("WORLD_SIZE")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    os.environ["WORLD_SIZE"] = str(world)
    try:
        yield
    finally:
        dist.destroy_process_group()
        if saved is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = saved


def adapters(model) -> list[dict]:
    """Every LoRA/DoRA module: its name, rank, alpha, dropout and whether its base is quantised."""
    out = []
    for name, m in model.named_modules():
        if not (hasattr(m, "lora_a") and hasattr(m, "lora_b")):
            continue
        rank = m.lora_a.out_features
        alpha = getattr(m, "alpha", None)
        if alpha is None:  # DoRALinear keeps scaling = alpha / rank
            alpha = m.scaling * rank
        out.append({"name": name, "class": type(m).__name__, "rank": rank, "alpha": float(alpha),
                    "dropout": float(m.dropout.p) if isinstance(m.dropout, torch.nn.Dropout) else 0.0,
                    "quantized": bool(getattr(m, "_quantize_base", False)),
                    "dora": hasattr(m, "magnitude")})
    return out


def effective(run_dir: Path) -> dict:
    """Set the plan's recipe up and read what it holds."""
    command = json.loads((run_dir / "plan" / "command.json").read_text())["command"]
    recipe, config_file = command[command.index("--config") - 1], command[command.index("--config") + 1]
    yaml_args, cli_args = TuneRecipeArgumentParser().parse_known_args(["--config", config_file])
    cfg = _merge_yaml_and_cli_args(yaml_args, cli_args)
    asked = torch.device(cfg.device).type
    if asked == "cuda" and not torch.cuda.is_available():
        cfg.device = "cpu"
    processes = launch(command)
    with one_of(processes["world"]):
        return _effective(recipe, cfg, asked, processes)


def _effective(recipe: str, cfg, asked: str, processes: dict) -> dict:
    r = recipe_class(recipe)(cfg=cfg)
    with contextlib.redirect_stdout(io.StringIO()):
        r.setup(cfg=cfg)
    model, opt, loader = r._model, r._optimizer, r._dataloader
    group = opt.param_groups[0]
    total = r.total_epochs * r._steps_per_epoch
    ds = loader.dataset
    order = getattr(ds, "order", None)
    collate = getattr(loader.collate_fn, "func", loader.collate_fn)
    tok_args = component_args(cfg.tokenizer)
    template = tok_args.get("chat_template")
    loss = r._loss_fn
    first = ds.examples[0] if hasattr(ds, "examples") else {}
    return {
        "recipe": recipe, "recipe_class": type(r).__name__, "launch": processes,
        "reshard_after_forward": reshard_after_forward(r),
        "device": asked, "dtype": str(r._dtype).replace("torch.", ""),
        "param_dtypes": sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()}),
        "seed": r.seed, "log_every_n_steps": r._log_every_n_steps,
        "grad_accum": r._gradient_accumulation_steps, "epochs": r.total_epochs,
        "steps_per_epoch": r._steps_per_epoch, "total_steps": total,
        "clip_grad_norm": getattr(r, "_clip_grad_norm", None),
        "activation_checkpointing": getattr(r, "_enable_activation_checkpointing", None),
        "checkpoint_wrapped": any("CheckpointWrapper" in type(m).__name__ for m in model.modules()),
        "compile": getattr(r, "_compile", None),
        "save_adapter_weights_only": getattr(r, "_save_adapter_weights_only", None),
        "checkpoint_dir": str((getattr(r, "_checkpointer", None) or r._checkpoint_client._get_checkpointer())
                              ._checkpoint_dir),
        "model": {"embed_dim": model.tok_embeddings.embedding_dim, "num_layers": len(model.layers),
                  "adapters": adapters(model)},
        "optimizer": {"class": next(c.__name__ for c in type(opt).__mro__ if c.__module__.startswith("torch.optim")),
                      "lr": group["initial_lr"], "weight_decay": group["weight_decay"],
                      "max_grad_norm": getattr(opt, "max_grad_norm", None),
                      "save_steps": getattr(opt, "save_steps", None)},
        "lr_factors": [r._lr_scheduler.lr_lambdas[0](s) for s in range(total)],
        "loss": {"class": type(loss).__name__, **{k: getattr(loss, k) for k in ("beta", "gamma", "label_smoothing")
                                                  if hasattr(loss, k)}},
        "batch_size": loader.batch_size,
        "sampler_shuffle": bool(getattr(loader.sampler, "shuffle", False)),
        "collate": collate.__name__,
        "dataset": {"class": type(ds).__name__, "len": len(ds), "order": order,
                    "packs": len(ds.packs) if hasattr(ds, "packs") else None,
                    "args": component_args(cfg.dataset, None),
                    "preference": "chosen_input_ids" in first},
        "tokenizer": {"args": tok_args, "max_seq_len": r._tokenizer.max_seq_len,
                      "chat_template": Path(template).read_text(encoding="utf-8") if template else None},
        "metric_logger": {"artifacts": r._metric_logger.artifacts},
        "validation": any(k in cfg for k in ("dataset_val", "run_val_every_n_steps")),
        "rows": sum(1 for line in open(cfg.dataset.source) if line.strip()),
    }


def main(argv: list[str]) -> int:
    gc.freeze()  # the checkpointer's gc.collect() after each load then skips the imported modules' objects
    out, results = Path(argv[1]), []
    home = os.getcwd()
    for run_dir in map(Path, argv[2:]):
        run_dir = run_dir.resolve()
        os.chdir(run_dir)
        sys.path.insert(0, str(run_dir))
        try:
            results.append(effective(run_dir))
        except Exception as exc:  # one plan's failure is reported with it, the others still read
            results.append({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            sys.path[:] = [p for p in sys.path if not p.startswith(str(run_dir))]
            for name in [m for m in sys.modules if m.split(".")[0] in PLAN_MODULES]:
                del sys.modules[name]
            os.chdir(home)
    out.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
