"""torch's warnings that a config value caused, said as one line of advice naming the key.

torch warns about what it sees (a worker count, a call order, a flag) in its own terms and with
a source line; the user can only act on a config key. :func:`config_advice` catches the warnings
in :data:`ADVICE` while a command or a fit runs and logs the matching advice once each; every
other warning passes through unchanged.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable

#: (torch's message, the advice); ``{1}``... are the message's groups
ADVICE: list[tuple[re.Pattern, str]] = [
    (re.compile(r"create (\d+) worker processes in total\. Our suggested max number of worker in current system "
                r"is (\d+)"),
     ("advice: data.num_workers={1} is more than the {2} cores this process may use; set data.num_workers={2} "
      "or fewer (more only pays when reading the files waits on a slow disk or network)")),
    (re.compile(r"lr_scheduler\.step\(\)` before `optimizer\.step\(\)"),
     ("advice: the fp16 loss scaler skipped the first optimizer steps (their gradients overflowed) while the "
      "schedule went on, so it runs a few steps ahead; harmless, or set train.amp=bf16 (no loss scaling) "
      "where the device has it")),
    (re.compile(r"'pin_memory' argument is set as true but no accelerator is found"),
     ("advice: train.device asks for CUDA (pinned loader memory) but torch finds no GPU; set train.device=cpu, "
      "or check the CUDA install")),
]


def advice_for(message: str) -> str | None:
    """Our line for torch's warning ``message``, or None when it is not one we translate."""
    for pattern, text in ADVICE:
        m = pattern.search(message)
        if m:
            return text.format(m[0], *m.groups())
    return None


_active: list[set] = []  # the advice said by the config_advice now in force (one at most)


@contextlib.contextmanager
def config_advice(log: Callable[[str], None]):
    """While inside, torch's warnings in :data:`ADVICE` become ``log(advice)``, once per advice.
    Inside another one (a fit inside a command) the outer one speaks, so nothing is said twice."""
    if _active:
        yield
        return
    said: set[str] = set()
    _active.append(said)
    with contextlib.ExitStack() as stack:
        stack.callback(_active.pop)
        stack.enter_context(warnings.catch_warnings())
        show = warnings.showwarning

        def translate(message, category, filename, lineno, file=None, line=None):
            text = advice_for(str(message))
            if text is None:
                show(message, category, filename, lineno, file, line)
            elif text not in said:
                said.add(text)
                log(text)

        warnings.showwarning = translate
        # torch's "once per location" would hide a second fit's warning from us: see each one
        warnings.filterwarnings("always", message=r".*(suggested max number of worker|lr_scheduler\.step\(\)"
                                                  r"|'pin_memory' argument)")
        yield
