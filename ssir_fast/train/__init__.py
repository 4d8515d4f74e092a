"""Training and experiments behind the `ssir-fast` CLI: configuration (`config`), models
(`models`), the training loop with DDP / plots (`trainer`), checkpoint files (`checkpoint`),
mixed precision (`precision`), the motivation experiment (`motivation`) and the plots (`plots`)."""
from .config import ConfigError, TrainConfig, make_config
from .trainer import Trainer, evaluate_checkpoint, format_table, train

__all__ = ["TrainConfig", "ConfigError", "make_config", "Trainer", "train", "evaluate_checkpoint",
           "format_table"]
