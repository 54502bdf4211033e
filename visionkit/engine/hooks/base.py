"""The hook contract: everything around the training loop is a hook that listens to its events.

The loop (:class:`~visionkit.engine.trainer.Trainer`) calls, in this order::

    setup                                once, when the trainer is built
    before_fit                           fit() starts (after a resume has restored the state)
      before_epoch
        before_step(batch)               a batch arrived (None: every sample was unreadable)
        after_step(logs)                 its losses were read (logs["step"] is the step it ran at)
        after_optimizer_step             the optimizer stepped (trainer.global_step counts it)
        after_nonfinite(losses, elsewhere)  a batch's loss was NaN/Inf and was not trained on
      after_validate(split, metrics, vis)   also for test() and the final test
      after_epoch
    after_train                          the epochs ran out or early stopping ended them
    after_fit                            fit() ends, whichever way (also on an error)
    close                                trainer.close(): release files and handles

A hook overrides only what it needs; the base class does nothing, so a hook that is off costs
nothing. A hook with state that must survive a resume returns it from :meth:`state_dict`; the
checkpoint keeps it under the hook's :attr:`name` and :meth:`load_state_dict` gets it back.
Hooks run in list order; a hook that must see another's result comes after it.
"""

from __future__ import annotations

import torch


class Hook:
    #: the key of this hook's state in a checkpoint; hooks with state set a stable name
    name: str = ""

    def setup(self, trainer) -> None: ...
    def before_fit(self, trainer) -> None: ...
    def before_epoch(self, trainer) -> None: ...
    def before_step(self, trainer, batch: dict | None) -> None: ...
    def after_step(self, trainer, logs: dict) -> None: ...
    def after_optimizer_step(self, trainer) -> None: ...
    def after_nonfinite(self, trainer, losses: dict, elsewhere: bool) -> None: ...
    def after_validate(self, trainer, split: str, metrics: dict, vis: torch.Tensor | None) -> None: ...
    def after_epoch(self, trainer) -> None: ...
    def after_train(self, trainer) -> None: ...
    def after_fit(self, trainer) -> None: ...
    def close(self, trainer) -> None: ...

    def scalars(self) -> dict[str, float]:
        """Counters written with every train record of ``metrics.jsonl`` (skipped steps, ...)."""
        return {}

    def state_dict(self) -> dict | None:
        """What a resume needs to continue exactly; None: nothing."""
        return None

    def load_state_dict(self, state: dict) -> None: ...


EVENTS = tuple(name for name in vars(Hook) if name.startswith(("setup", "before_", "after_", "close")))
