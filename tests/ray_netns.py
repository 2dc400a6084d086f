"""A private Ray cluster on loopback, for the cluster tests and bench/cluster.py.

Everything runs in a network namespace of its own (``unshare --net``, then ``ip link set lo up``):
without one, Ray turns 127.0.0.1 into the machine's interface address. A holder process keeps the
namespace; the nodes (``ray start --head`` / ``ray start --address``) and the recbuild clients
join it with ``nsenter --net``. Ray's token auth is on, with a fresh token. Nodes can be started
under ``unshare --mount`` with folders over-mounted by an empty tmpfs, so they cannot see the
client's files. Stopping kills, by process id, every process in the namespace (never `ray stop`,
which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def missing_tools() -> str | None:
    """Why this machine cannot run the cluster (None when it can)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return "ray is not installed (pip install 'recbuild[ray]')"
    for tool in ("unshare", "nsenter", "ip", "ray"):
        if shutil.which(tool) is None and not (tool == "ray" and _ray_cli().exists()):
            return f"{tool} is not on PATH"
    done = subprocess.run(["unshare", "--net", "--mount", "sh", "-c", "ip link set lo up"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"cannot make a network namespace here (unshare --net: {done.stderr.strip()[:120]})"
    return None


def _ray_cli() -> Path:
    return Path(sys.executable).with_name("ray")


class NetnsCluster:
    def __init__(self, base: Path, port: int = 6380):
        self.base = base
        self.port = port
        self.token = secrets.token_hex(32)
        self.holder: subprocess.Popen | None = None
        self.ray_tmp = base / "ray"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                   PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
        env.update(extra or {})
        return env

    def _netns(self) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net"]

    def start_holder(self) -> None:
        self.ray_tmp.mkdir(parents=True, exist_ok=True)
        # unshare execs sh, which execs sleep: the holder's pid is the namespace's first process
        self.holder = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up && exec sleep 86400"],
                                       stdin=subprocess.DEVNULL)
        for _ in range(50):
            done = subprocess.run([*self._netns(), "ip", "-o", "link", "show", "lo"], capture_output=True, text=True)
            if "UP" in done.stdout:
                return
            time.sleep(0.1)
        raise RuntimeError("the network namespace did not come up")

    def start_node(self, head: bool, cpus: int = 1, resources: dict | None = None,
                   hide: list[Path] = ()) -> str:
        """Start a node; returns its Ray node id. ``hide``: folders this node sees as empty."""
        argv = [str(_ray_cli()), "start", f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1",
                "--disable-usage-stats"]
        if head:
            argv += ["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.ray_tmp}"]
        else:
            argv += [f"--address={self.address}"]
        if resources:
            argv.append(f"--resources={json.dumps(resources)}")
        before = set(self.raylets())
        if hide:
            mounts = " && ".join(f"mount -t tmpfs -o size=1m recbuild-hidden {shlex.quote(str(p))}" for p in hide)
            command = [*self._netns(), "unshare", "--mount", "sh", "-c", f"{mounts} && exec {shlex.join(argv)}"]
        else:
            command = [*self._netns(), *argv]
        done = subprocess.run(command, capture_output=True, text=True, env=self.env(), timeout=180)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        new = [n for n in self.raylets() if n not in before]
        if len(new) != 1:
            raise RuntimeError(f"expected one new raylet, found {new}")
        return new[0]

    def pids(self) -> list[int]:
        """Every process in the namespace (the holder's net namespace)."""
        if self.holder is None:
            return []
        try:
            mine = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/net") == mine:
                        found.append(int(entry))
                except OSError:
                    continue
        return found

    def raylets(self) -> dict[str, int]:
        """node id -> raylet pid, for the raylets in the namespace."""
        found = {}
        for pid in self.pids():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"/raylet"):
                for arg in argv:
                    if arg.startswith(b"--node_id="):
                        found[arg.split(b"=", 1)[1].decode()] = pid
        return found

    def run(self, argv: list[str], cwd: Path, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*self._netns(), *argv], cwd=cwd, capture_output=True, text=True,
                              env=self.env(env), timeout=timeout)

    def popen(self, argv: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([*self._netns(), *argv], cwd=cwd, env=self.env(), **kwargs)

    def recbuild(self, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-m", "recbuild.cli", *args], cwd=cwd, timeout=timeout)

    def stop(self) -> None:
        """Kill every process of the namespace by its pid (the holder last)."""
        for _ in range(3):
            pids = [p for p in self.pids() if self.holder is None or p != self.holder.pid]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
