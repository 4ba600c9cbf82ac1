"""Fault injection for the node's robustness checks: make the engine raise on chosen frames.

    DCFM_NODE_FAULTS="oom@5,error@12" dcfm_node ...

raises torch.OutOfMemoryError on the 5th call of the engine and RuntimeError on the 12th (counted
from 1 over the node's lifetime). Read once at start-up; when the variable is unset the engine is
called directly, so the hot path carries no check.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

ENV = "DCFM_NODE_FAULTS"
KINDS = ("oom", "error")
_ITEM = re.compile(r"(oom|error)@([1-9]\d*)")


def parse_faults(text: str) -> dict[int, str]:
    """'oom@5,error@12' -> {5: 'oom', 12: 'error'}; ValueError naming the bad item."""
    out: dict[int, str] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        m = _ITEM.fullmatch(item)
        if not m:
            raise ValueError(f"{ENV}: cannot read {item!r}; expected KIND@FRAME with KIND one of "
                             f"{', '.join(KINDS)} and FRAME >= 1, e.g. oom@5,error@12")
        out[int(m.group(2))] = m.group(1)
    return out


def with_faults(process: Callable[[Any], Any], faults: dict[int, str]) -> Callable[[Any], Any]:
    """`process` wrapped so that call N raises the fault listed for N."""
    import torch

    calls = 0

    def faulty(image: Any) -> Any:
        nonlocal calls
        calls += 1
        kind = faults.get(calls)
        if kind == "oom":
            raise torch.OutOfMemoryError(f"injected out of memory on engine call {calls} ({ENV})")
        if kind == "error":
            raise RuntimeError(f"injected engine error on engine call {calls} ({ENV})")
        return process(image)

    return faulty


def engine_call(process: Callable[[Any], Any]) -> tuple[Callable[[Any], Any], dict[int, str]]:
    """The engine call the node uses: `process` itself, or wrapped when DCFM_NODE_FAULTS is set."""
    text = os.environ.get(ENV, "")
    if not text.strip():
        return process, {}
    faults = parse_faults(text)
    return with_faults(process, faults), faults
