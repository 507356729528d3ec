"""Progress of long commands on stderr, readable on a terminal and in a log alike."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

from rich.console import Console


@contextlib.contextmanager
def show_steps(command: str, labels: dict[str, str]) -> Iterator[Callable[[str], None]]:
    """Yield a callback that shows each step of a long command on stderr: a spinner on a
    terminal, else one plain `command: step` line per step (a spinner prints nothing to a
    pipe or CI log). stdout stays for results."""
    err = Console(stderr=True)
    if err.is_terminal:
        show_warning = warnings.showwarning

        def above_spinner(*args, **kwargs):  # else a warning lands on the spinner's line
            status.stop()
            show_warning(*args, **kwargs)
            status.start()

        with err.status(f"{command}: starting") as status:
            warnings.showwarning = above_spinner
            try:
                yield lambda step: status.update(f"{command}: {labels.get(step, step)}")
            finally:
                warnings.showwarning = show_warning
        return

    def line(step: str) -> None:
        err.print(f"{command}: {labels.get(step, step)}", soft_wrap=True, markup=False, highlight=False)
        err.file.flush()

    yield line
