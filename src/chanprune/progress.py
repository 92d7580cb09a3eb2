"""Rich progress helpers shared by the training engine and long-running commands.

Everything here is quiet unless asked: ``enabled=False`` prints nothing at all. With
``enabled=True`` a live bar is drawn only when stderr is a terminal (or a notebook); in a log
file or a captured stream only the one-line summaries written with :meth:`Bar.log` / :func:`echo`
appear, so CI logs stay readable.
"""
from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["Bar", "console", "echo", "format_metrics", "live_capable", "show_progress", "track"]

_CONSOLE: Console | None = None
_SHOW = False  # the library stays quiet; the CLI turns bars on for its long steps (show_progress)


def console() -> Console:
    """The shared stderr console (created lazily so tests that swap ``sys.stderr`` still work)."""
    global _CONSOLE
    if _CONSOLE is None or _CONSOLE.file is not sys.stderr:
        _CONSOLE = Console(stderr=True)
    return _CONSOLE


def live_capable() -> bool:
    """True when a live-updating bar makes sense (stderr is an interactive terminal or notebook)."""
    c = console()
    return bool(c.is_terminal or c.is_jupyter) and not c.is_dumb_terminal


def echo(message: str, enabled: bool = True) -> None:
    """Print one line to stderr when ``enabled``."""
    if enabled:
        console().print(message, highlight=False)


def format_metrics(**metrics: Any) -> str:
    """``loss=0.512 acc=83.1%`` from keyword values; floats get 3 significant decimals, None is skipped."""
    parts = []
    for key, value in metrics.items():
        if value is None:
            continue
        if key in ("acc", "accuracy", "test_acc", "train_acc"):
            parts.append(f"{key}={value:.2f}%")
        elif key == "lr":
            parts.append(f"lr={value:.4g}")
        elif isinstance(value, float):
            parts.append(f"{key}={value:.4f}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


class Bar:
    """A single progress bar with a free-text metrics field.

    Use as a context manager::

        with Bar("train", total=steps, enabled=progress) as bar:
            for ...:
                bar.advance(loss=0.3, acc=91.0)
            bar.log("epoch 1: ...")

    When disabled (or not on a terminal) ``advance``/``update`` cost next to nothing.
    """

    def __init__(self, description: str, total: int | None, *, enabled: bool = True,
                 completed: int = 0, transient: bool = False) -> None:
        self.enabled = bool(enabled)
        self.live = self.enabled and live_capable()
        self._progress: Progress | None = None
        self._task = None
        self._description = description
        self._total = total
        self._completed = completed
        self._transient = transient

    def __enter__(self) -> "Bar":
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
                console=console(),
                transient=self._transient,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                self._description, total=self._total, completed=self._completed, metrics="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)  # type: ignore[arg-type]
            self._progress = None

    def advance(self, n: int = 1, **metrics: Any) -> None:
        """Move the bar ``n`` steps and (optionally) replace the metrics text."""
        if self._progress is None:
            return
        kwargs: dict[str, Any] = {"advance": n}
        if metrics:
            kwargs["metrics"] = format_metrics(**metrics)
        self._progress.update(self._task, **kwargs)

    def update(self, *, description: str | None = None, **metrics: Any) -> None:
        """Change the description and/or metrics text without moving the bar."""
        if self._progress is None:
            return
        kwargs: dict[str, Any] = {}
        if description is not None:
            kwargs["description"] = description
        if metrics:
            kwargs["metrics"] = format_metrics(**metrics)
        self._progress.update(self._task, **kwargs)

    def log(self, message: str) -> None:
        """Print a line above the bar (or plainly, when not live) if enabled."""
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(message, highlight=False)
        else:
            echo(message)


def show_progress(flag: bool = True) -> None:
    """Draw a bar for every :func:`track`-ed long step (analysis passes, compensation statistics, evaluation)."""
    global _SHOW
    _SHOW = bool(flag)


class _Tracked:
    """A sequence whose every full iteration draws a transient bar (one per pass: collectors may read twice)."""

    def __init__(self, items: list, description: str) -> None:
        self.items, self.description = items, description

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self):
        with Bar(self.description, total=len(self.items), transient=True) as bar:
            for item in self.items:
                yield item
                bar.advance()


def track(items, description: str):
    """``items`` with a progress bar over each pass when :func:`show_progress` is on and stderr is a terminal;
    otherwise ``items`` itself (no cost)."""
    if not (_SHOW and live_capable()) or items is None:
        return items
    return _Tracked(list(items), description)
