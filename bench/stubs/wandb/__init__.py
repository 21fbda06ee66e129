"""Stand-in for wandb on the GPU image (its 20 MB wheel and OpenTelemetry stack do not fit the carry limit):
Axolotl imports it at module level; anytune never logs to it (use_wandb unset)."""
run = None


def __getattr__(name):
    raise RuntimeError(f"wandb.{name}: wandb is not installed here (a stand-in module)")
