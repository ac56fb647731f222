"""Top functions of a py-spy profile (``--format raw``, as ``bench/run --profile`` writes).

``python -m bench.hotspots FILE [--top N]`` prints, per function, the share of the
worker's busy samples in which it was running (self) and on the stack (total). Idle
time in the event loop is not sampled (py-spy leaves idle threads out), so the shares
are of the CPU the worker spent.
"""
from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    """``func (path/to/pkg/mod.py:12)`` -> ``pkg/mod.py:func``."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    parts = Path(match["file"]).parts
    keep = parts[-2:] if len(parts) > 1 else parts
    return f"{'/'.join(keep)}:{match['func']}"


def summarise(path: Path) -> tuple[int, Counter, Counter]:
    """Samples in all, and per function the samples it ran in (self) and was on (total)."""
    own: Counter = Counter()
    total: Counter = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_name(frame) for frame in stack.split(";")[1:]]  # [0] is the thread
        if not frames:
            continue
        samples += int(count)
        own[frames[-1]] += int(count)
        for name in set(frames):
            total[name] += int(count)
    return samples, own, total


def report(path: Path, top: int) -> str:
    samples, own, total = summarise(path)
    if not samples:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {samples} samples", "  self%  total%  function"]
    for name, count in own.most_common(top):
        lines.append(f"  {100 * count / samples:5.1f}  {100 * total[name] / samples:6.1f}  {name}")
    lines.append("  by total (inclusive):")
    for name, count in total.most_common(top * 2):
        lines.append(f"  {100 * own[name] / samples:5.1f}  {100 * count / samples:6.1f}  {name}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hotspots", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    opts = parser.parse_args()
    print("\n\n".join(report(path, opts.top) for path in opts.files))


if __name__ == "__main__":
    main()
