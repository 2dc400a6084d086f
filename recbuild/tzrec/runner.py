"""How recbuild runs TorchEasyRec: which interpreter, which launcher, and the one place a process starts.

Settings (recipe ``tzrec: {...}`` at the top level or per artifact; the artifact's own wins):
  python         the interpreter of the environment that has tzrec: an absolute path or a command
                 on PATH. Default: $TZREC_PYTHON, then ``python``.
  launcher       prefix for the distributed entry points (train_eval, eval, export, predict, hitrate,
                 retrieval). Default: ``{python} -m torch.distributed.run --nnodes=1
                 --nproc-per-node=1 --node_rank=0 --master_addr=127.0.0.1 --master_port={port}``.
                 ``{python}`` is the interpreter, ``{port}`` a free local port; any prefix that runs
                 ``-m MODULE ARGS`` works (a multi-GPU torchrun, ``srun torchrun ...``, a cluster submit
                 command that waits for the job).
  tool_launcher  prefix for the single-process tools (create_faiss_index, init_tree, cluster_tree).
                 Default ``{python}``.
  env            extra environment variables for every tzrec process.
The environment is not part of artifact keys (the same build on another machine or venv gets the
same key, so the shared cache works); the tzrec version is (:func:`version_fact`).

:func:`launch` is the only function that starts a process; child-process hardening replaces it alone.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from recbuild.errors import BuildError

HELPER = Path(__file__).with_name("helper.py")
BOOT = Path(__file__).with_name("boot")  # run in the tzrec interpreter (see boot/*.py)
SEEDED = "recbuild_tzrec_seeded"
PYTHON_ENV = "TZREC_PYTHON"
DEFAULT_LAUNCHER = ("{python}", "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=1",
                    "--node_rank=0", "--master_addr=127.0.0.1", "--master_port={port}")
DEFAULT_TOOL_LAUNCHER = ("{python}",)
INSTALL_HINT = ("set `tzrec: {python: /path/to/venv/bin/python}` in the recipe or the TZREC_PYTHON "
                "environment variable; tools/tzrec_cpu_env/install.sh builds a CPU environment "
                "(docs/tzrec.md)")
TAIL_LINES = 15

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "How TorchEasyRec runs (not part of the key): interpreter, launchers, environment. "
                   "A recipe-wide `tzrec:` sets it for every tzrec_* artifact.",
    "properties": {
        "python": {"type": "string", "minLength": 1,
                   "description": "interpreter of the environment with tzrec: an absolute path or a "
                                  "command on PATH (default: $TZREC_PYTHON, then python)"},
        "launcher": {"oneOf": [{"type": "string", "minLength": 1},
                               {"type": "array", "items": {"type": "string"}, "minItems": 1}],
                     "description": "prefix for distributed steps; {python} and {port} are replaced "
                                    "(default: {python} -m torch.distributed.run --nproc-per-node=1 "
                                    "... --master_port={port})"},
        "tool_launcher": {"oneOf": [{"type": "string", "minLength": 1},
                                    {"type": "array", "items": {"type": "string"}, "minItems": 1}],
                          "description": "prefix for single-process tools (default: {python})"},
        "env": {"type": "object", "additionalProperties": {"type": "string"},
                "description": "extra environment variables for every tzrec process"},
    },
    "additionalProperties": False,
}


@dataclass
class TzrecEnv:
    python: str  # absolute path of the interpreter
    launcher: tuple[str, ...]
    tool_launcher: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)

    def prefix(self, distributed: bool) -> list[str]:
        """The launcher with {python} and {port} filled in."""
        template = self.launcher if distributed else self.tool_launcher
        port = str(free_port()) if any("{port}" in part for part in template) else ""
        return [part.replace("{python}", self.python).replace("{port}", port) for part in template]

    def process_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        # `torchrun` and friends in a custom launcher resolve to the tzrec environment's own
        bin_dir = str(Path(self.python).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env


def _split(value: Any, default: Sequence[str]) -> tuple[str, ...]:
    if value is None:
        return tuple(default)
    if isinstance(value, str):
        return tuple(shlex.split(value))
    return tuple(str(v) for v in value)


def check_settings(settings: dict | None) -> list[tuple[str, str]]:
    """Problems a recipe can be told about before any build (dotted path under `tzrec`, message)."""
    settings = settings or {}
    problems = []
    python = settings.get("python")
    if python and os.sep in python and not os.path.isabs(python):
        problems.append(("tzrec.python", f"{python!r} is a relative path; give an absolute path "
                                         "(e.g. ${env.TZREC_PYTHON}) or a command on PATH"))
    for key in ("launcher", "tool_launcher"):
        if key in settings:
            try:
                parts = _split(settings[key], ())
            except ValueError as exc:
                problems.append((f"tzrec.{key}", f"cannot be split like a shell command: {exc}"))
                continue
            if not parts:
                problems.append((f"tzrec.{key}", "is empty"))
    return problems


def interpreter_name(settings: dict | None) -> str:
    settings = settings or {}
    return settings.get("python") or os.environ.get(PYTHON_ENV) or "python"


def resolve_interpreter(settings: dict | None) -> str:
    name = interpreter_name(settings)
    source = "tzrec.python" if (settings or {}).get("python") else \
        (PYTHON_ENV if os.environ.get(PYTHON_ENV) else "the default")
    found = shutil.which(name) if not os.path.isabs(name) else (name if os.access(name, os.X_OK) else None)
    if not found:
        raise BuildError(f"the tzrec interpreter {name!r} ({source}) was not found or is not "
                         f"executable; {INSTALL_HINT}")
    return found


def environment(settings: dict | None) -> TzrecEnv:
    settings = settings or {}
    python = resolve_interpreter(settings)
    return TzrecEnv(python=python, launcher=_split(settings.get("launcher"), DEFAULT_LAUNCHER),
                    tool_launcher=_split(settings.get("tool_launcher"), DEFAULT_TOOL_LAUNCHER),
                    env=dict(settings.get("env") or {}))


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# The helper (tzrec's own config parser, the version) in the tzrec interpreter


def call_helper(python: str, command: str, request: dict, env: dict[str, str] | None = None) -> dict:
    """Run helper.py COMMAND in the tzrec interpreter; its JSON answer (raises on a broken answer)."""
    import tempfile

    from recbuild.common import process_tree

    # Through the reaper like every step (it dies with recbuild); files, not pipes, carry the JSON.
    with tempfile.TemporaryFile() as question, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        question.write(json.dumps(request).encode())
        question.seek(0)
        status = process_tree.run([python, str(HELPER), command], env=env, stdin=question, stdout=out,
                                  stderr=err)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if status == 127 and "cannot run" in stderr:
        raise BuildError(f"the tzrec interpreter {python!r} was not found; {INSTALL_HINT}")
    try:
        answer = json.loads(stdout)
    except ValueError:
        tail = " | ".join((stderr or stdout).strip().splitlines()[-TAIL_LINES:])
        raise BuildError(f"{python} could not run recbuild's tzrec helper ({command}, exit "
                         f"{status}): {tail or 'no output'}; is it a Python 3 interpreter?") from None
    return answer


_PROBES: dict[str, dict] = {}


def probe(python: str) -> dict:
    """tzrec version and distribution of an interpreter (cached per process and interpreter)."""
    if python not in _PROBES:
        _PROBES[python] = call_helper(python, "probe", {})
    return _PROBES[python]


def require_tzrec(python: str) -> dict:
    info = probe(python)
    if info.get("error") or not info.get("version"):
        raise BuildError(f"{python} has no tzrec ({info.get('error', 'no version found')}); install "
                         f"TorchEasyRec in that environment or point recbuild at another one: {INSTALL_HINT}")
    return info


# Environment variables that change what tzrec writes (read in tzrec's code: quantised embeddings,
# input tiling, TDM node-id hashing, id bucketizing, TensorRT/AOT export, export batch sizes)
OUTPUT_ENV = ("QUANT_EMB", "QUANT_EC_EMB", "INPUT_TILE", "USE_DISTRIBUTED_EMBEDDING", "USE_HASH_NODE_ID",
              "USE_FARM_HASH_TO_BUCKETIZE", "ENABLE_TRT", "ENABLE_AOT", "TRT_MAX_SEQ_LEN",
              "TRT_MAX_BATCH_SIZE", "MAX_EXPORT_BATCH_SIZE")


def toolchain_facts(settings: dict | None) -> dict[str, str]:
    """What decides a tzrec step's bytes besides its inputs, for the artifact key: tzrec's version,
    torch, torchrec and fbgemm as tzrec's interpreter has them, its Python and machine, and the
    output-changing environment variables tzrec will see (recbuild's environment with the recipe's
    ``tzrec.env`` on top; only those set)."""
    facts = {"tzrec": version_fact(settings)}
    try:
        info = probe(resolve_interpreter(settings))
    except BuildError:
        info = {}
    for name, version in sorted((info.get("toolchain") or {}).items()):
        facts[f"tzrec {name}"] = str(version)
    if info.get("python_version"):
        facts["tzrec python"] = ".".join(str(info["python_version"]).split(".")[:2])
    if info.get("machine"):
        facts["tzrec machine"] = str(info["machine"])
    env = {**os.environ, **{str(k): str(v) for k, v in ((settings or {}).get("env") or {}).items()}}
    facts.update({f"env {name}": env[name] for name in OUTPUT_ENV if name in env})
    return facts


def version_fact(settings: dict | None) -> str:
    """'tzrec-sekai 0.9.6' for the artifact key; 'unavailable: ...' when it cannot be asked."""
    try:
        python = resolve_interpreter(settings)
        info = probe(python)
    except BuildError:
        return f"unavailable ({interpreter_name(settings)} not found)"
    if info.get("error") or not info.get("version"):
        return f"unavailable ({interpreter_name(settings)} has no tzrec)"
    return f"{info.get('dist') or 'tzrec'} {info['version']}"


# ---------------------------------------------------------------------------------------------
# Launching


def launch(argv: Sequence[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> int:
    """Run argv to completion with stdout+stderr appended to log_path; returns the exit status.

    It runs below recbuild's reaper (recbuild.common.process_tree): in a session of its own, so torchrun's
    workers and anything else it starts die with it, with recbuild however recbuild dies, and on an
    interrupt. This is the only place recbuild's tzrec kinds start a tzrec step.
    """
    from recbuild.common import process_tree

    with open(log_path, "ab") as log:
        return process_tree.run(list(argv), cwd=cwd, env=env, stdout=log, stderr=log)


_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d*\]:\s?")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b")


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The lines that say why a step failed: up to and including the last exception a tzrec process
    raised (torchrun's own summary, which follows it, says only that a child failed), else the tail."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    kept = [_RANK_PREFIX.sub("", line.rstrip()) for line in text.splitlines() if line.strip()]
    for i in range(len(kept) - 1, -1, -1):
        if _EXCEPTION.match(kept[i]) and "ChildFailedError" not in kept[i]:
            return kept[max(0, i + 1 - lines):i + 1]
    return kept[-lines:]


def run_module(tz: TzrecEnv, module: str, args: Sequence[str], *, distributed: bool, cwd: Path,
               log_path: Path, what: str, seed: int | None = None, boot_dir: Path | None = None,
               on_line: Callable[[str], None] | None = None) -> list[str]:
    """Run ``-m module args`` through the launcher; raise a BuildError with the log's tail on failure.

    ``seed``: run it through ``-m recbuild_tzrec_seeded SEED module args`` (boot/, copied into
    ``boot_dir``, a folder the launched processes can read), which seeds torch, numpy and random
    and turns on torch's deterministic algorithms on CPU. ``on_line`` gets each line the tool
    logs, as it is written (recbuild.tzrec.progress). Returns the argv that ran (for the log).
    """
    from recbuild.tzrec.progress import LogFollower

    env = tz.process_env()
    head = ["-m", module]
    if seed is not None:
        if boot_dir is None:
            raise ValueError("a seeded run needs boot_dir")
        boot_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(BOOT / f"{SEEDED}.py", boot_dir / f"{SEEDED}.py")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(boot_dir.resolve()), env.get("PYTHONPATH")) if p)
        env["PYTHONHASHSEED"] = str(seed)
        head = ["-m", SEEDED, str(seed), module]
    argv = [*tz.prefix(distributed), *head, *args]
    with open(log_path, "ab") as log:
        log.write(("$ " + shlex.join(argv) + "\n").encode())
        offset = log.tell()
    if on_line is None:
        status = launch(argv, cwd=cwd, env=env, log_path=log_path)
    else:
        with LogFollower(log_path, on_line, offset):
            status = launch(argv, cwd=cwd, env=env, log_path=log_path)
    if status != 0:
        tail = log_tail(log_path)
        hint = ""
        if any("ShimCalledError" in line or "recbuild stand-in" in line for line in tail):
            hint = (" (this step used pyfg/graphlearn/common_io, which the environment only has as "
                    "stand-ins: it needs the real Alibaba packages)")
        how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
        shown = " | ".join(tail) if tail else "(no output)"
        raise BuildError(f"{what} ({module}) {how}{hint}; full log: {log_path}; last lines: {shown}")
    return argv
