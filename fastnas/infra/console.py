"""Console output: progress bars (tqdm in a terminal, silent stand-ins off it) and log lines that do
not tear the bars."""

from __future__ import annotations

import sys


def is_terminal() -> bool:
    return sys.stderr.isatty()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


_BARS: list = []  # live tqdm bars: log lines go through tqdm.write meanwhile, so they do not tear them


class _Bar:
    def __init__(self, bar):
        self.bar = bar
        _BARS.append(self)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
        if self in _BARS:
            _BARS.remove(self)


def progress_bar(total: int, desc: str, enabled: bool = True, *, whole_run: bool = False, initial: int = 0):
    """A tqdm bar with rate and ETA in a terminal (`enabled`: rank 0), else a silent stand-in: the
    per-epoch log lines are the progress report when the output is a file or a pipe. `whole_run`: the
    bar of the whole run in epochs (stays on screen, on top); otherwise the current epoch's steps."""
    if enabled and is_terminal():
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
        return _Bar(tqdm(total=total, initial=initial, desc=desc, position=0 if whole_run else 1,
                         leave=whole_run, unit="epoch" if whole_run else "step", dynamic_ncols=True))
    return _NoBar()


def echo(message: str) -> None:
    if _BARS:
        from tqdm import tqdm

        tqdm.write(message)
    else:
        print(message, flush=True)

