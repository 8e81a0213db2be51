"""The background job runner (``sammed.jobs.Worker``): order, results, partial results, cancel, failures."""

from __future__ import annotations

import threading
import time

import numpy as np

from sammed.jobs import Cancelled
from sammed.jobs import Worker


def test_worker_runs_jobs_in_order_and_reports_results():
    worker = Worker()
    try:
        ids = [worker.submit("square", lambda c, v=v: np.full(2, v * v)) for v in range(3)]
        first = worker.submit("first", lambda c: "ahead", first=True)
        assert worker.wait_idle(5)
        done = [e for e in worker.drain() if e.kind == "done"]
        assert [e.jobId for e in done][-3:] == ids and first in [e.jobId for e in done]
        np.testing.assert_array_equal(done[-1].result, [4, 4])
        assert worker.alive
    finally:
        worker.shutdown()
    assert not worker.alive


def test_partial_results_arrive_in_order_before_done():
    worker = Worker()
    try:

        def job(control):
            for i in range(3):
                control.post(i)
                control.progress((i + 1) / 3, f"piece {i}")
            return "all"

        worker.submit("pieces", job)
        assert worker.wait_idle(5)
        events = worker.drain()
        assert [(e.kind, e.result) for e in events if e.kind != "progress"] == [
            ("partial", 0),
            ("partial", 1),
            ("partial", 2),
            ("done", "all"),
        ]
    finally:
        worker.shutdown()


def test_worker_cancel_stops_running_job_and_drops_queue_then_accepts_new_work():
    worker = Worker()
    started = threading.Event()
    steps = []

    def slow(control):
        started.set()
        for i in range(500):
            if control.should_stop():
                raise Cancelled(partial=i)
            steps.append(i)
            control.progress(i / 500, f"step {i}")
            time.sleep(0.005)
        return "finished"

    try:
        first = worker.submit("slow", slow)
        queued = worker.submit("slow", slow)
        assert started.wait(5)
        assert worker.cancel() == 2
        assert worker.wait_idle(5)
        events = worker.drain()
        kinds = {(e.jobId, e.kind) for e in events if e.kind != "progress"}
        assert kinds == {(first, "cancelled"), (queued, "cancelled")}
        assert len(steps) < 500
        again = worker.submit("quick", lambda c: 7)
        assert worker.wait_idle(5)
        assert [(e.jobId, e.result) for e in worker.drain() if e.kind == "done"] == [(again, 7)]
    finally:
        worker.shutdown()


def test_a_job_that_returns_after_cancel_hands_over_its_partial_result():
    worker = Worker()
    started = threading.Event()

    def stops_politely(control):
        started.set()
        while not control.should_stop():
            time.sleep(0.005)
        return "partial result"

    try:
        worker.submit("polite", stops_politely)
        assert started.wait(5)
        worker.cancel()
        assert worker.wait_idle(5)
        (event,) = [e for e in worker.drain() if e.kind != "progress"]
        assert (event.kind, event.result) == ("cancelled", "partial result")
    finally:
        worker.shutdown()


def test_worker_reports_failures_with_message():
    worker = Worker()
    try:

        def bad(control):
            raise ValueError("slice 99 is out of range")

        worker.submit("bad", bad)
        assert worker.wait_idle(5)
        (event,) = worker.drain()
        assert (event.kind, event.error) == ("failed", "slice 99 is out of range")
    finally:
        worker.shutdown()
