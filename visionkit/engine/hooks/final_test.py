"""``train.final_test``: once training ends, score the best checkpoint on the test split."""

from __future__ import annotations

import json

from visionkit.engine.hooks.base import Hook


class FinalTest(Hook):
    """Loads ``best.pt`` (when there is one) into the evaluation weights, scores the test split
    through ``trainer.test()`` and writes ``test_metrics.json``. Not run after a signal stop."""

    def after_train(self, trainer) -> None:
        if "test" not in trainer.datasets:
            trainer.log("note: train.final_test is on but the data set has no test split; nothing was "
                        "tested (give the data a test split, then use visionkit eval --split test)")
            return
        best = trainer.run_dir / "checkpoints" / "best.pt"
        if best.exists():
            trainer.load_weights(best)
        metrics = trainer.test()
        if trainer.group.is_main:
            (trainer.run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2))
