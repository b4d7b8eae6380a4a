"""The core list a worker is pinned to (MODELPRESS_CPUS), in the kernel's cpu-list syntax
(`0-3`, `2,3`, `0-1,6`), as taskset and cgroup cpusets write it."""

from __future__ import annotations

import re

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
#: Far above any machine's core count: a typo such as `0-40000` is refused rather than
#: turned into a set of forty thousand numbers.
MAX_CORE = 4095


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """The cores `text` names, sorted; ValueError with a message fit for the operator."""
    cores: set[int] = set()
    parts = [part.strip() for part in text.split(",")]
    for part in parts:
        match = _RANGE.match(part)
        if match is None:
            raise ValueError(
                f"MODELPRESS_CPUS={text!r} is not a core list: write cores and ranges such as "
                "'0-1', '2,3' or '0-3,8'"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"MODELPRESS_CPUS={text!r}: the range {part!r} runs backwards")
        if last > MAX_CORE:
            raise ValueError(f"MODELPRESS_CPUS={text!r}: core {last} is beyond {MAX_CORE}")
        cores.update(range(first, last + 1))
    return tuple(sorted(cores))


def format_cpu_list(cores: tuple[int, ...] | list[int] | set[int]) -> str:
    """`[0, 1, 2, 5]` as `0-2,5`."""
    ordered = sorted(set(cores))
    spans: list[str] = []
    start = previous = None
    for core in ordered:
        if start is None:
            start = previous = core
        elif previous is not None and core == previous + 1:
            previous = core
        else:
            spans.append(f"{start}-{previous}" if start != previous else f"{start}")
            start = previous = core
    if start is not None:
        spans.append(f"{start}-{previous}" if start != previous else f"{start}")
    return ",".join(spans)
