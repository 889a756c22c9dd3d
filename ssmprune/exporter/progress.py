"""Timing the steps of a long job, with an optional live display.

Library code opens ``with steps.step("torch.export"):`` blocks; ``Steps``
records how long each took, ``RichSteps`` also shows a spinner and the
elapsed time on stderr (the CLI uses it; tests and library callers need not).
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Steps:
    """Records the duration of each named step, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            with self._display(title):
                yield
        finally:
            self.seconds[title] = time.perf_counter() - start

    def _display(self, title: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class RichSteps(Steps):
    """``Steps`` with a rich spinner per step on stderr; finished steps stay listed."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console

        self.console = Console(stderr=True)

    @contextlib.contextmanager
    def _display(self, title: str) -> Iterator[None]:
        start = time.perf_counter()
        ok = False
        try:
            with self.console.status(f"{title} ...", spinner="dots"):
                yield
            ok = True
        finally:
            mark = "[green]done[/green]" if ok else "[red]failed[/red]"
            self.console.print(f"  {title:<28} {mark} {time.perf_counter() - start:6.1f}s",
                               highlight=False)
