"""visionkit: YAML-configured image recognition on PyTorch.

    from visionkit import load_config, Trainer
    cfg = load_config("configs/quickstart.yaml", ["train.epochs=2"])
    trainer = Trainer(cfg)
    trainer.fit()
    trainer.test()
"""

from visionkit.config import Config, load_config
from visionkit.engine.trainer import Trainer

# importing the task modules registers them (the schema needs the task names)
from visionkit.tasks import classification as _classification  # noqa: F401,E402

__all__ = ["Config", "Trainer", "load_config"]
__version__ = "0.1.0"
