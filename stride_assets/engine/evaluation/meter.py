"""Wall time and peak resident memory of a block of work (RSS polled from /proc)."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


def rss_mb() -> float:
    """Current resident set size of this process in MB (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


@dataclass
class Meter:
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


@contextmanager
def metered(interval: float = 0.02) -> Iterator[Meter]:
    """Measure a block: ``with metered() as m: ...; m.seconds, m.peak_rss_mb``."""
    meter = Meter(peak_rss_mb=rss_mb())
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval):
            meter.peak_rss_mb = max(meter.peak_rss_mb, rss_mb())

    thread = threading.Thread(target=poll, daemon=True)
    start = time.perf_counter()
    thread.start()
    try:
        yield meter
    finally:
        stop.set()
        thread.join()
        meter.seconds = time.perf_counter() - start
        meter.peak_rss_mb = max(meter.peak_rss_mb, rss_mb())
