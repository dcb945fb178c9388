"""Recording Sinkhorn calls belongs to a thread's context, not the process (web server threads); settings are
arguments of each call, so one thread's mode never reaches another's calls."""

from __future__ import annotations

import threading

import torch

from otseg.ops import record_sinkhorn_calls, sinkhorn


def _cost() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 16, 4, generator=g)


def test_recorders_and_settings_do_not_leak_across_threads() -> None:
    inside, entered, release = [], threading.Event(), threading.Event()

    def other_thread() -> None:
        with record_sinkhorn_calls() as calls:
            entered.set()
            release.wait(30)
            sinkhorn(_cost(), 0.05, fixed_iters=3)
        inside.extend(calls)

    worker = threading.Thread(target=other_thread)
    worker.start()
    assert entered.wait(30)
    with record_sinkhorn_calls() as here:
        sinkhorn(_cost(), 0.05)  # while the other thread's recorder is open
    release.set()
    worker.join(30)
    assert len(here) == 1 and here[0].iterations != 3  # the default rule, not the other thread's fixed 3
    assert [c.iterations for c in inside] == [3]  # the other thread saw only its own call, with its mode
