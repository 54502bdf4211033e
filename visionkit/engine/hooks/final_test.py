"""``train.final_test``: once training ends, score the best checkpoint on the test split."""

from __future__ import annotations

import json

from visionkit.engine.hooks.base import Hook
from visionkit.engine.loading import load_weights


class FinalTest(Hook):
    """Loads ``best.pt`` (when there is one) into the evaluation weights, scores the test split
    through ``trainer.test()`` and writes ``test_metrics.json``. Not run after a signal stop."""

    def before_fit(self, trainer) -> None:
        if "test" not in trainer.datasets:  # said when it can still be fixed, not hours later
            trainer.log(f"note: train.final_test is on, but {trainer.source.no_split('test')}; this run will "
                        "train and validate only")

    def after_train(self, trainer) -> None:
        if "test" not in trainer.datasets:
            trainer.log("note: no final test: the data set has no test split (see the note at the start)")
            return
        best = trainer.run_dir / "checkpoints" / "best.pt"
        if best.exists():
            load_weights(trainer.eval_task, best, trainer.cfg, trainer.classes)
        metrics = trainer.test()
        if trainer.group.is_main:
            (trainer.run_dir / "test_metrics.json").write_text(json.dumps(metrics, indent=2))
