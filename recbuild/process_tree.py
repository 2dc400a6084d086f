"""Child processes that die with recbuild, however recbuild dies.

A step's command (a ``command`` artifact's shell, a TorchEasyRec tool) runs under a tiny supervisor
process, Python with no imports beyond the standard library, which:

- makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``), so every descendant of the command,
  also background jobs, double-forked daemons and ``setsid`` children, stays below it;
- holds the read end of a pipe whose write end only recbuild holds: when recbuild dies in any way
  (exit, exception, SIGKILL, OOM kill) the pipe reads end-of-file;
- kills every remaining descendant and exits when that happens, when it gets SIGTERM/SIGINT (recbuild
  interrupted), and also when the command itself exits: a background job left running would go on
  writing into a folder that is being published.

Why not ``PR_SET_PDEATHSIG`` alone: it reaches only the direct child (the shell, not what the shell
started), and it fires when the *thread* that started the child ends, which under ``make -j`` is a
worker thread, not recbuild. Why not process groups alone: a SIGKILLed recbuild cannot signal them,
and a child can leave its group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import IO, Sequence

# Runs as `python -I -S -c SUPERVISOR WATCH_FD ARGV...`: isolated, no site-packages, ~15 ms to start.
SUPERVISOR = r"""
import ctypes, os, select, signal, sys, time

libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
watch_fd = int(sys.argv[1])
argv = sys.argv[2:]
me = os.getpid()

def descendants():
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
                parents.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found, stack = [], [me]
    while stack:
        for pid in parents.get(stack.pop(), []):
            found.append(pid)
            stack.append(pid)
    return found

def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return

def kill_all():
    for _ in range(1000):
        pids = descendants()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)
        reap()

stopped = []
def on_signal(signum, frame):
    stopped.append(signum)

signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
child = os.fork()
if child == 0:
    os.close(watch_fd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"cannot run {argv[0]}: {exc.strerror}\n".encode())
        os._exit(127)
try:
    watched, pidfd, tick = [watch_fd, os.pidfd_open(child)], None, 1.0
    pidfd = watched[1]
except (AttributeError, OSError):  # kernels before 5.3: poll the child instead
    watched, pidfd, tick = [watch_fd], None, 0.05
status = None
while status is None and not stopped:
    try:
        ready, _, _ = select.select(watched, [], [], tick)
    except InterruptedError:
        continue
    if watch_fd in ready and not os.read(watch_fd, 1):
        stopped.append("parent gone")
        break
    done, code = os.waitpid(child, 0 if pidfd in ready else os.WNOHANG)
    if done:
        status = code
    reap()
kill_all()
if status is None:
    os._exit(143)
os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""


def start(argv: Sequence[str], *, cwd: str | os.PathLike | None = None, env: dict | None = None,
          stdout: IO | int | None = None, stderr: IO | int | None = None,
          stdin: IO | int | None = subprocess.DEVNULL) -> "SupervisedProcess":
    """Start ``argv`` under a supervisor; the process tree dies with recbuild (see module doc)."""
    read_end, write_end = os.pipe()  # both non-inheritable; only read_end is passed on
    try:
        popen = subprocess.Popen([sys.executable, "-I", "-S", "-c", SUPERVISOR, str(read_end), *argv],
                                 cwd=cwd, env=env, stdout=stdout, stderr=stderr, stdin=stdin,
                                 pass_fds=(read_end,), start_new_session=True)
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return SupervisedProcess(popen, write_end)


class SupervisedProcess:
    """A started command: ``wait()`` for its exit status (a negative value = killed by that signal,
    as subprocess reports it), ``stop()`` to kill the whole tree."""

    def __init__(self, popen: subprocess.Popen, lifeline: int):
        self.popen = popen
        self._lifeline = lifeline

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self) -> int:
        try:
            code = self.popen.wait()
        except BaseException:
            self.stop()
            raise
        self._close_lifeline()
        # the supervisor reports "killed by signal N" as 128 + N, as a shell does
        return -(code - 128) if 128 < code < 160 else code

    def stop(self, timeout: float = 5.0) -> None:
        """Kill the command and every descendant; returns once the supervisor has exited."""
        try:
            self.popen.send_signal(signal.SIGTERM)
            self.popen.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            self.popen.kill()
            self.popen.wait()
        finally:
            self._close_lifeline()

    def _close_lifeline(self) -> None:
        if self._lifeline >= 0:
            os.close(self._lifeline)
            self._lifeline = -1


def run(argv: Sequence[str], **kwargs) -> int:
    """Start, wait, return the exit status (negative = killed by that signal)."""
    return start(argv, **kwargs).wait()
