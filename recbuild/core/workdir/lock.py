"""One build per workdir at a time: an flock on <workdir>/.recbuild/lock naming its holder. A second
recbuild fails at once (LockHeld, its own exit code), or waits for the holder when asked to."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path

from recbuild.errors import LockHeld


class WorkdirLock:
    def __init__(self, state_dir: Path, wait: float | None = None):
        self.path = state_dir / "lock"
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + (self.wait or 0)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # polled rather than a blocking flock, so Ctrl-C and the deadline stay responsive
                if self.wait and time.monotonic() < deadline:
                    time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
                    continue
                holder = self._holder(fd)
                os.close(fd)
                waited = f"after waiting {self.wait:g}s " if self.wait else ""
                raise LockHeld(f"another recbuild is building in this workdir {waited}({holder}); wait for it "
                               f"to finish (make --wait does), or stop it. Lock file: {self.path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "argv": sys.argv}).encode())
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
        except (OSError, ValueError):
            info = {}
        pid = info.get("pid", "?")
        argv = " ".join(info.get("argv", [])[1:]) if info.get("argv") else ""
        return f"pid {pid}" + (f": recbuild {argv}" if argv else "")

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
