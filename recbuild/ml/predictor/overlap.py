"""The overlapped run: a reader thread, forward threads and an in-order writer thread, joined by
bounded pipes; the first failure of any thread stops them all and is raised on the calling thread."""

from __future__ import annotations

import queue
import sys
import threading
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from recbuild.errors import BuildError
from recbuild.ml.predictor.output import ROW_GROUP_ROWS, EmbeddingSink
from recbuild.ml.predictor.source import ParquetInput, filtered_batches
from recbuild.ml.predictor.plan import InputPlan


class _Stopped(Exception):
    """Raised inside a pipeline thread when another thread failed and the run is abandoned."""


_DONE = object()  # end-of-stream marker between pipeline stages


class _Pipe:
    """A bounded FIFO between two pipeline threads that gives up once the run is stopping.

    Bounded (a couple of batches) so that memory stays proportional to the batch size whatever the
    relative speed of reading, computing and writing.
    """

    def __init__(self, stop: threading.Event, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = stop

    def put(self, item: Any) -> None:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self) -> Any:
        while True:
            if self._stop.is_set():
                raise _Stopped
            try:
                return self._queue.get(timeout=0.05)
            except queue.Empty:
                continue


class _Worker(threading.Thread):
    """Runs one pipeline stage; the first failure of any stage stops the whole run."""

    def __init__(self, name: str, body: Callable[[], None], stop: threading.Event,
                 failures: list[BaseException]):
        super().__init__(name=f"recbuild-predict-{name}", daemon=True)
        self._body, self._stop_event, self._failures = body, stop, failures

    def run(self) -> None:
        try:
            self._body()
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the main thread, which re-raises it
            self._failures.append(exc)
            self._stop_event.set()


def run_overlapped(source: ParquetInput, plan: InputPlan, batch_size: int, prepare, compute,
                   sink: EmbeddingSink, bar, thread_clock, compute_workers: int) -> None:
    """reader thread -> ``compute_workers`` forward threads -> writer thread, via bounded pipes.

    Each forward thread runs whole batches with one torch thread: the cores are shared by
    independent forward passes instead of one pass split across OpenMP threads, so nothing waits
    at an OpenMP barrier for a thread the OS has descheduled (to our own reader/writer, or to
    another process). Batches carry a sequence number and the writer puts them back in input
    order; at most ``compute_workers`` + the pipe depths are in flight, so memory stays bounded.
    The calling thread is one of the forward threads (and the one that reports progress).
    """
    import torch

    stop = threading.Event()
    failures: list[BaseException] = []
    to_compute = _Pipe(stop, depth=compute_workers + 1)
    # The writer stalls while it encodes a row group (16 batches of 4096 rows): a pipe that holds a
    # row group's worth of batches keeps the forward threads running meanwhile (measured 9% faster
    # than a depth of 3). Memory stays bounded: at most that many batches wait.
    to_write = _Pipe(stop, depth=compute_workers + min(32, max(2, ROW_GROUP_ROWS // batch_size)))
    progress_lock = threading.Lock()

    def read_body() -> None:
        clk = thread_clock()
        for seq, (batch, global_rows) in enumerate(filtered_batches(source, plan, batch_size)):
            clk.lap("read")
            item = prepare(batch, global_rows, clk)
            to_compute.put((seq, item))
            clk.lap("wait_reader")
        for _ in range(compute_workers):  # one end marker per forward thread
            to_compute.put(_DONE)

    def compute_body() -> None:
        clk = thread_clock()
        with torch.inference_mode():  # thread-local: every forward thread enters it itself
            while True:
                item = to_compute.get()
                clk.lap("wait_input")
                if item is _DONE:
                    break
                seq, prepared = item
                batch, matrix = compute(prepared, clk)
                to_write.put((seq, batch, matrix))
                if bar is not None:
                    with progress_lock:
                        bar.advance(batch.num_rows)
                clk.lap("wait_output")
        to_write.put(_DONE)

    def write_body() -> None:
        clk = thread_clock()
        waiting: dict[int, tuple[pa.RecordBatch, np.ndarray]] = {}  # finished out of order
        next_seq, running = 0, compute_workers
        while running:
            item = to_write.get()
            clk.lap("wait_writer")
            if item is _DONE:
                running -= 1
                continue
            seq, batch, matrix = item
            waiting[seq] = (batch, matrix)
            while next_seq in waiting:
                sink.write(*waiting.pop(next_seq), clk)
                next_seq += 1
        if waiting:  # cannot happen unless a batch was lost: never write a table with a hole
            raise BuildError(f"internal error: batches {sorted(waiting)} were never written in order")
        sink.close()
        clk.lap("write")

    threads = [_Worker("read", read_body, stop, failures), _Worker("write", write_body, stop, failures)]
    threads += [_Worker(f"forward-{i}", compute_body, stop, failures) for i in range(1, compute_workers)]
    for thread in threads:
        thread.start()
    try:
        compute_body()
        threads[1].join()  # the writer closes the last part file
    except _Stopped:
        pass  # a worker failed; its exception is raised below
    except BaseException:
        stop.set()
        raise
    finally:
        if failures or sys.exc_info()[0] is not None:
            stop.set()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
