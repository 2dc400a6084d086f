"""Child processes that die with recbuild, however recbuild dies.

Steps that run programs (a ``command`` artifact's shell, a TorchEasyRec tool) start them through one
small reaper process per recbuild process: Python with nothing but the standard library, started on
first use. The reaper

- makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``): every descendant of every command,
  also background jobs, double-forked daemons and ``setsid`` children, stays below it, and orphans
  come back to it instead of to init;
- holds the read end of a pipe whose write end only recbuild holds: when recbuild dies in any way
  (exit, exception, SIGKILL, OOM kill) the pipe reads end-of-file and the reaper kills every
  descendant before it exits;
- starts each command in a session of its own and, when the command exits, kills what is left in
  that session (a background job left running would go on writing into a folder being published);
  ``stop()`` kills the session at once (Ctrl-C, SIGTERM).

The reaper is not a child of the process that starts it (it forks once and its first process
exits): a Ray worker that exits or is killed (``ray.cancel(force=True)``, the job's end) SIGKILLs its
own children (Ray's ``kill_child_processes_on_worker_exit``), which would kill a reaper before it can
kill the command's session, leaving the command running, orphaned, on the node.

Why not ``PR_SET_PDEATHSIG`` on the child: it reaches only the direct child (the shell, not what the
shell started) and fires when the *thread* that started the child ends, which under ``make -j`` is a
worker thread. Why one reaper rather than one supervisor per command: a Python start costs 20-50 ms,
which a graph of thousands of small commands would pay every time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from typing import IO, Sequence

# Runs as `python -I -S -c REAPER LIFELINE_FD SOCKET_FD`: isolated, no site-packages.
REAPER = r"""
import ctypes, json, os, select, signal, socket, sys, time

if os.fork():  # not its starter's child (module doc: a Ray worker's exit SIGKILLs its children)
    os._exit(0)
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
lifeline = int(sys.argv[1])
channel = socket.socket(fileno=int(sys.argv[2]))
me = os.getpid()
running = {}   # pid -> request id
environments = {}  # id -> environment dict: sent once, then referred to
finished = {}  # pid -> wait status, for pids reaped while killing
wake_r, wake_w = os.pipe()
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w)
signal.signal(signal.SIGCHLD, lambda *a: None)
signal.signal(signal.SIGTERM, lambda *a: None)
signal.signal(signal.SIGINT, signal.SIG_IGN)

def processes():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
                if fields[0] != b"Z":
                    found.append((int(entry), int(fields[1]), int(fields[3])))  # pid, ppid, session
            except (OSError, IndexError, ValueError):
                pass
    return found

def descendants():
    children = {}
    for pid, ppid, _ in processes():
        children.setdefault(ppid, []).append(pid)
    found, stack = [], [me]
    while stack:
        for pid in children.get(stack.pop(), []):
            found.append(pid)
            stack.append(pid)
    return found

def reap():
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        finished[pid] = status

def kill_until_gone(select_pids):
    for _ in range(2000):
        pids = select_pids()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)
        reap()

def in_session(sid, keep=()):
    return lambda: [pid for pid, _, s in processes() if s == sid and pid not in keep]

def send(message):
    try:
        channel.send(json.dumps(message).encode())
    except OSError:
        pass

def spawn(request, fds):
    # posix_spawn, not fork + exec in Python: a forked Python child costs milliseconds per step.
    argv = request["argv"]
    for fd in fds:  # (received fds are inheritable; only their copies as 0, 1, 2 go to the child)
        os.set_inheritable(fd, False)
    actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(fds)]
    reset = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ)
    try:
        os.chdir(request.get("cwd") or "/")  # the child starts where the reaper stands
        if "env" in request:
            environments[request["env_id"]] = request["env"]
        pid = os.posix_spawnp(argv[0], argv, environments[request["env_id"]], file_actions=actions, setsid=True,
                              setsigdef=reset)
    except OSError as exc:
        os.write(fds[2], f"cannot run {argv[0]}: {exc.strerror}\n".encode())
        send({"id": request["id"], "pid": -1})
        send({"id": request["id"], "status": 127 << 8})
        return
    finally:
        for fd in fds:
            os.close(fd)
        os.chdir("/")
    running[pid] = request["id"]
    send({"id": request["id"], "pid": pid})

def report_exits():
    reap()
    for pid in [p for p in running if p in finished]:
        # What the command left behind in its process group (a shell's background jobs): one
        # signal, no /proc scan per step. What left the group dies when recbuild is done.
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        send({"id": running.pop(pid), "status": finished.pop(pid)})

def handle(message, fds):
    request = json.loads(message)
    if request["op"] == "spawn":
        spawn(request, fds)
    elif request["op"] == "stop":
        pid = next((p for p, i in running.items() if i == request["id"]), None)
        if pid is not None:
            for sig in (signal.SIGTERM,):
                try:
                    os.killpg(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + request.get("grace", 5.0)
            while time.monotonic() < deadline and in_session(pid)():
                time.sleep(0.01)
                reap()
            kill_until_gone(in_session(pid))

try:
    while True:
        ready, _, _ = select.select([lifeline, channel, wake_r], [], [])
        if wake_r in ready:
            data = os.read(wake_r, 512)
            if signal.SIGTERM in data:
                break
        if lifeline in ready and not os.read(lifeline, 1):
            break
        if channel in ready:
            try:
                message, fds, _, _ = socket.recv_fds(channel, 1 << 20, 8)
            except OSError:
                break
            if not message:
                break
            handle(message, fds)
        report_exits()
finally:
    kill_until_gone(descendants)
    os._exit(0)
"""


class _Reaper:
    """recbuild's side of the reaper: one per process, started on first use, restarted if it died."""

    _instance: "_Reaper | None" = None
    _instance_lock = threading.Lock()

    @classmethod
    def get(cls) -> "_Reaper":
        with cls._instance_lock:
            if cls._instance is None or not cls._instance.alive:
                cls._instance = cls()
            return cls._instance

    def __init__(self):
        lifeline_r, self._lifeline = os.pipe()  # both non-inheritable; only the read end is passed on
        self._channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._popen = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", REAPER, str(lifeline_r), str(theirs.fileno())],
                pass_fds=(lifeline_r, theirs.fileno()), stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(lifeline_r)
            theirs.close()
        self._popen.wait()  # (the reaper's first process only forks it off)
        self.alive = True
        self._lock = threading.Lock()
        self._next_id = 0
        self._waiting: dict[int, SupervisedProcess] = {}
        self._environments: dict[str, int] = {}  # canonical env text -> id the reaper knows it by
        threading.Thread(target=self._read, name="recbuild-reaper", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = self._channel.recv(1 << 16)
            except OSError:
                message = b""
            if not message:
                break
            reply = json.loads(message)
            with self._lock:
                process = self._waiting.get(reply["id"])
                if process is not None and "status" in reply:
                    del self._waiting[reply["id"]]
            if process is not None:
                process._deliver(reply)
        self.alive = False  # the reaper is gone: whoever still waits gets "killed"
        with self._lock:
            orphans, self._waiting = list(self._waiting.values()), {}
        for process in orphans:
            process._deliver({"status": 9})

    def spawn(self, argv: Sequence[str], cwd, env: dict, fds: list[int]) -> "SupervisedProcess":
        with self._lock:
            self._next_id += 1
            process = SupervisedProcess(self, self._next_id)
            self._waiting[process.id] = process
            request = {"op": "spawn", "id": process.id, "argv": [str(a) for a in argv],
                       "cwd": str(cwd) if cwd is not None else None}
            env_text = json.dumps(env, sort_keys=True)
            env_id = self._environments.get(env_text)
            if env_id is None:  # most steps run with the same environment: send it once
                env_id = self._environments[env_text] = len(self._environments)
                request["env"] = env
            request["env_id"] = env_id
            socket.send_fds(self._channel, [json.dumps(request).encode()], fds)
        process._started.wait()
        return process

    def stop(self, process_id: int, grace: float) -> None:
        try:
            self._channel.send(json.dumps({"op": "stop", "id": process_id, "grace": grace}).encode())
        except OSError:
            pass


class SupervisedProcess:
    """A started command: ``wait()`` for its exit status (negative = killed by that signal, as
    subprocess reports it), ``stop()`` to kill it and everything in its session."""

    def __init__(self, reaper: _Reaper, process_id: int):
        self._reaper = reaper
        self.id = process_id
        self.pid: int | None = None
        self._started = threading.Event()
        self._done = threading.Event()
        self._status: int | None = None

    def _deliver(self, reply: dict) -> None:
        if "pid" in reply:
            self.pid = reply["pid"]
            self._started.set()
        if "status" in reply:
            self._status = os.waitstatus_to_exitcode(reply["status"]) if reply["status"] != 9 else -9
            self._started.set()
            self._done.set()

    def wait(self) -> int:
        try:
            while not self._done.wait(0.5):  # a timeout keeps Ctrl-C deliverable to the main thread
                pass
        except BaseException:
            self.stop()
            raise
        return self._status  # type: ignore[return-value]

    def stop(self, grace: float = 5.0) -> None:
        """Kill the command and everything in its session; returns once it is gone."""
        if not self._done.is_set():
            self._reaper.stop(self.id, grace)
            self._done.wait(grace + 10)


def _fd(value, default_mode: int, opened: list[int]) -> int:
    if value is None or value == subprocess.DEVNULL:
        fd = os.open(os.devnull, default_mode)
        opened.append(fd)
        return fd
    return value if isinstance(value, int) else value.fileno()


def start(argv: Sequence[str], *, cwd: str | os.PathLike | None = None, env: dict | None = None,
          stdout: IO | int | None = None, stderr: IO | int | None = None,
          stdin: IO | int | None = subprocess.DEVNULL) -> SupervisedProcess:
    """Start ``argv`` below the reaper; it and its descendants die with recbuild (module doc).
    ``stdout``/``stderr`` are files (or fds); None means /dev/null."""
    opened: list[int] = []
    try:
        fds = [_fd(stdin, os.O_RDONLY, opened), _fd(stdout, os.O_WRONLY, opened),
               _fd(stderr, os.O_WRONLY, opened)]
        return _Reaper.get().spawn(argv, cwd, dict(os.environ if env is None else env), fds)
    finally:
        for fd in opened:
            os.close(fd)


def run(argv: Sequence[str], **kwargs) -> int:
    """Start, wait, return the exit status (negative = killed by that signal)."""
    return start(argv, **kwargs).wait()
