"""Training and experiments behind the `ssir-fast` CLI: configuration (`config`), models and
their protocol (`models`), the builders of a run (`builders`), the per-batch step (`step`), the
loop (`trainer`), evaluation (`evaluation`), checkpoints and logs (`checkpoint`), mixed precision
(`precision`), DDP helpers (`distributed`), the motivation experiment (`motivation`) and the
plots (`plots`). ARCHITECTURE.md at the repository root maps them."""
from .config import ConfigError, TrainConfig, make_config
from .evaluation import evaluate, evaluate_checkpoint, format_table
from .trainer import Trainer, train

__all__ = ["TrainConfig", "ConfigError", "make_config", "Trainer", "train", "evaluate",
           "evaluate_checkpoint", "format_table"]
