"""visionkit: YAML-configured image recognition on PyTorch.

    from visionkit import load_config, Trainer
    cfg = load_config("configs/quickstart.yaml", ["train.epochs=2"])
    trainer = Trainer(cfg)
    trainer.fit()
    trainer.test()
"""

from visionkit import registrations  # noqa: F401  (every built-in task, backbone, data set, ...)
from visionkit.config import Config, load_config
from visionkit.engine.trainer import Trainer

__all__ = ["Config", "Trainer", "load_config"]
__version__ = "0.1.0"
