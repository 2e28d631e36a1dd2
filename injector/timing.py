"""Wall time of the parts of a night (recipes, replay self-distillation, reference evaluation, teacher pass, Fisher,
training, candidate evaluation, PPL/KL, registration), collected for the run summary and MLflow.

`with timed("teacher_pass"):` adds to the night being collected (a context variable set by `collecting()`); outside
a night it only measures. Stage-level times (preflight, ingest, plan, train, judge, record) are kept by pipeline.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_night: ContextVar[dict[str, float] | None] = ContextVar("injector_night_times", default=None)


@contextmanager
def collecting() -> Iterator[dict[str, float]]:
    times: dict[str, float] = {}
    token = _night.set(times)
    try:
        yield times
    finally:
        _night.reset(token)


@contextmanager
def timed(name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        times = _night.get()
        if times is not None:
            times[name] = times.get(name, 0.0) + time.perf_counter() - t0
