"""A status line that keeps moving while a step without its own progress runs.

``StatusLine(desc, enabled=...)`` shows one tqdm line on stderr, ``desc: 12.3 s``, redrawn every
``interval`` seconds by a daemon thread from the moment it is made until ``close()``, so a long
computation that reports nothing (the segment-level bootstrap and permutation statistics of a
series) does not look stalled behind a finished extraction bar. ``close()`` leaves the line with
the total time. It is also a context manager (closed on exit, errors included). Disabled
(``enabled=False``, e.g. ``--quiet``) it prints nothing and starts no thread. It never changes
what is computed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tqdm.auto import tqdm


class StatusLine:
    """One stderr line ``desc: <elapsed> s`` redrawn every ``interval`` s until ``close()``."""

    def __init__(self, desc: str, *, enabled: bool = True, interval: float = 0.5):
        self.start = time.perf_counter()
        self._bar: Any = None
        self._stop = threading.Event()
        if not enabled:
            return
        self.desc = desc
        self._bar = tqdm(total=None, desc=f"{desc}: 0.0 s", bar_format="{desc}")
        self._thread = threading.Thread(target=self._tick, args=(interval,), daemon=True)
        self._thread.start()

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._bar.set_description_str(f"{self.desc}: {time.perf_counter() - self.start:.1f} s")

    def close(self) -> float:
        """Stop the line (idempotent); the seconds since it was made."""
        seconds = time.perf_counter() - self.start
        if self._bar is not None and not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self._bar.set_description_str(f"{self.desc}: {seconds:.1f} s, done")
            self._bar.close()
        return seconds

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
