"""Progress of long commands on stderr, readable on a terminal and in a log alike."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


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


@contextlib.contextmanager
def counted(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)` for work of `total` units: a progress bar on a terminal, else a
    `label: done/total` line on stderr at each quarter (a bar prints nothing to a log)."""

    err = Console(stderr=True)
    if err.is_terminal:
        columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task(label, total=total)
            yield lambda n: progress.advance(task, n)
        return
    done = [0]

    def advance(n: int) -> None:
        before, done[0] = done[0], done[0] + n
        if total and (4 * before) // total != (4 * done[0]) // total:
            err.print(f"{label}: {done[0]}/{total}", soft_wrap=True, markup=False, highlight=False)
            err.file.flush()

    err.print(f"{label}: 0/{total}", soft_wrap=True, markup=False, highlight=False)
    yield advance
