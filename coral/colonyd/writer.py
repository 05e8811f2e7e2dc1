"""One thread that runs the colony's database writes off its loop, one at a
time, and tells the loop through a pipe when each is done. The loop keeps
serving meanwhile; what comes in while a write runs goes into the next one
(group commit).

The loop wakes the thread through a pipe too, not a queue.Queue: a write to
a pipe lets go of the GIL while the kernel wakes the thread, so if the woken
thread takes the loop's CPU there, it can run. Woken from a queue's lock,
with the GIL held, it preempted the loop and both waited (a put was 13% of
the loop's time holding the GIL under bench/routing.py)."""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections import deque
from collections.abc import Callable

Job = Callable[[], None]


class Writer:
    def __init__(self, name: str = "colony-writer") -> None:
        self._name = name
        self._jobs: deque[Job | None] = deque()  # appended by the loop, taken by the thread (None: stop)
        self._results: deque[BaseException | None] = deque()  # appended by the thread, taken by the loop
        self._wake_read, self._wake_write = os.pipe()  # a byte per job handed over
        self._read, self._write = os.pipe()  # a byte per job done
        os.set_blocking(self._read, False)
        self._taken = 0  # outcomes the loop has taken
        self._drained = 0  # bytes the loop has read from the pipe: behind _taken while one is still to be read
        self._thread: threading.Thread | None = None

    def fileno(self) -> int:
        """Readable when a write has finished: for the loop's poller."""
        return self._read

    def submit(self, job: Job) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._jobs.append(job)
        os.write(self._wake_write, b"j")  # after the append: the thread finds the job once it reads the byte

    def _run(self) -> None:
        while True:
            os.read(self._wake_read, 4096)
            while self._jobs:
                job = self._jobs.popleft()
                if job is None:
                    return
                try:
                    job()
                    outcome: BaseException | None = None
                except Exception as exc:  # handed to the loop, which decides
                    outcome = exc
                self._results.append(outcome)
                os.write(self._write, b"x")

    def finished(self, wait: bool = False) -> list[BaseException | None]:
        """The outcomes of the writes finished since the last call, in order
        (None: written). With `wait`, blocks until at least one has finished."""
        if wait and not self._results:
            select.select([self._read], [], [])
        # The pipe first, then the outcomes: an outcome appended after the
        # read keeps its byte in the pipe, and the loop is woken for it. The
        # pipe is read only when it may hold a byte (the thread writes one
        # after each outcome): the loop calls this every turn, and reading
        # an empty pipe was a syscall and an exception each time.
        if self._drained < self._taken + len(self._results):
            with contextlib.suppress(BlockingIOError):
                self._drained += len(os.read(self._read, 4096))
        out = []
        while self._results:
            out.append(self._results.popleft())
        self._taken += len(out)
        return out

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.append(None)
            os.write(self._wake_write, b"q")
            self._thread.join()
            self._thread = None
        for fd in (self._wake_read, self._wake_write, self._read, self._write):
            os.close(fd)
