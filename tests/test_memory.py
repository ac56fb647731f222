"""When the worker hands memory back: after a large drop in sockets, once it has settled."""
from __future__ import annotations

from pushapp.ops.memory import MemoryReturn


def test_trims_once_after_a_large_drop_has_settled(caplog):
    counts = iter([5000, 5000, 3000, 1200, 1200, 1200, 1100, 1100])
    watcher = MemoryReturn(lambda: next(counts))
    trims = []
    for _ in range(8):
        caplog.clear()
        with caplog.at_level("INFO", logger="pushapp.ops.memory"):
            watcher.check()
        trims.append(bool(caplog.records))
    # Still falling at 3000 and 1200; settled at the second 1200. Then the peak is 1200,
    # and a drop of 100 is not worth a trim.
    assert trims == [False, False, False, False, True, False, False, False]


def test_no_trim_for_small_or_partial_drops():
    for series in ([800, 0, 0], [5000, 3000, 3000, 3000]):
        counts = iter(series)
        watcher = MemoryReturn(lambda: next(counts))
        peaks = []
        for _ in series:
            watcher.check()
            peaks.append(watcher.peak)
        assert peaks == [series[0]] * len(series)  # the peak is only reset by a trim
