"""The `command` kind: Make's escape hatch. Runs a shell command (arbitrary code, like a Makefile
rule) in the recipe's folder; whatever it writes into ``${out}`` becomes the artifact.

Placeholders in ``cmd``: ``${out}`` (the folder to write into, published atomically),
``${deps.NAME}`` (absolute path of a dependency: an artifact folder, or a source file/folder),
``${params.KEY}`` (a value from ``params``). The key covers the command text, params and the
dependencies' digests, so editing any of them rebuilds the artifact.
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Any

from recbuild.builders.base import Builder, BuildContext
from recbuild.errors import BuildError

# Only our own placeholders; any other ${...} (written $${...} in the recipe) is left for the shell.
_PLACEHOLDER = re.compile(r"\$\{\s*(out|deps\.[^}]*|params\.[^}]*)\s*\}")
_TAIL_LINES = 15


def _dep_named(name: str, deps) -> str | None:
    """The dependency ``${deps.NAME}`` means: NAME itself, or, in a matrix variant, the one variant
    of the matrix artifact NAME it reads (``index@256`` for ``${deps.index}``)."""
    if name in deps:
        return name
    matches = [d for d in deps if d.startswith(name + "@")]
    return matches[0] if len(matches) == 1 else None


def _run_logged(argv: list[str], ctx: BuildContext, env: dict) -> tuple[int, str]:
    """Run argv in the recipe's folder, its output appended to the step's log as it comes (as Make
    shows it), below recbuild's reaper: the shell and all it starts die with recbuild (see
    process_tree). Returns (exit status, the last 64 KiB of what it wrote)."""
    from recbuild.common import process_tree  # (not at import: a no-op make never runs a command)

    for handler in ctx.log.handlers:
        handler.flush()  # the "$ command" line first
    import tempfile  # (not at import either: every builder module is imported to load a recipe)

    output = open(ctx.log_path, "a+b") if ctx.log_path else tempfile.TemporaryFile()
    with output:
        start = output.seek(0, os.SEEK_END)
        returncode = process_tree.run(argv, cwd=ctx.recipe_dir, env=env, stdout=output, stderr=output)
        end = output.seek(0, os.SEEK_END)
        output.seek(max(start, end - (64 << 10)))
        text = output.read().decode("utf-8", errors="replace")
    return returncode, text


_OUTPUTS: dict[str, str] = {}


def _command_output(command: str) -> str:
    """What a toolchain command says, for the key: its first line and a digest of all it wrote
    (once per process: every key computation of a run asks)."""
    if command not in _OUTPUTS:
        import subprocess

        import xxhash

        try:
            done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, timeout=60,
                                  stdin=subprocess.DEVNULL)
            output, status = done.stdout + done.stderr, done.returncode
        except (OSError, subprocess.TimeoutExpired) as exc:
            output, status = str(exc).encode(), -1
        first = next((line.strip() for line in output.decode("utf-8", "replace").splitlines() if line.strip()), "")
        shown = first[:80] + ("..." if len(first) > 80 else "")
        prefix = "" if status == 0 else f"exit {status}: "
        _OUTPUTS[command] = f"{prefix}{shown} [{xxhash.xxh3_64_hexdigest(output)[:8]}]"
    return _OUTPUTS[command]


def _env_digest(name: str) -> str:
    """A variable's value as a digest: manifests travel to the shared cache, values may be secrets."""
    value = os.environ.get(name)
    if value is None:
        return "unset"
    import xxhash

    return f"set [{xxhash.xxh3_64_hexdigest(value.encode())[:8]}]"


class CommandBuilder(Builder):
    kind = "command"
    version = "1"
    description = "Run a shell command that writes its outputs into ${out}."
    reference_fields = ("deps",)
    path_fields = ("deps",)
    shell_fields = ("cmd",)
    schema = {
        "type": "object",
        "properties": {
            "cmd": {"type": "string", "minLength": 1,
                    "description": "Shell command, run in the recipe's folder. ${out}, ${deps.NAME}, ${params.KEY}."},
            "deps": {"type": "array", "items": {"type": "string", "minLength": 1}, "default": [],
                     "description": "Names of sources/artifacts, or file paths, the command reads."},
            "params": {"type": "object", "default": {},
                       "description": "Values the command depends on; changing one rebuilds."},
            "env": {"type": "object", "additionalProperties": {"type": "string"}, "default": {},
                    "description": "Extra environment variables for the command."},
            "toolchain": {"type": "array", "items": {"type": "string", "minLength": 1}, "default": [],
                          "description": "Commands whose output decides the artifact's bytes, e.g. "
                                         "\"gcc --version\": their output is part of the key (run by "
                                         "/bin/sh once per recbuild run, a no-op make too; keep them quick)."},
            "key_env": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                        "default": [],
                        "description": "Environment variables of recbuild's own environment that decide "
                                       "the bytes: their values are part of the key (recorded as digests)."},
            "description": {"type": "string"},
        },
        "required": ["cmd"],
    }
    key_exclude = ("description", "toolchain", "key_env")  # (in the key as facts: their outputs and values)

    @classmethod
    def key_facts(cls, params: dict[str, Any]) -> dict[str, Any]:
        facts = {f"toolchain `{command}`": _command_output(command) for command in params.get("toolchain") or ()}
        facts.update({f"env {name}": _env_digest(name) for name in params.get("key_env") or ()})
        return facts

    def check(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        problems = []
        deps = set(params["deps"])
        for match in _PLACEHOLDER.finditer(params.get("cmd", "")):
            ref = match.group(1).strip()
            if ref == "out":
                continue
            if ref.startswith("deps.") and _dep_named(ref[5:], deps) is not None:
                continue
            if ref.startswith("params.") and ref[7:] in params["params"]:
                continue
            if ref.startswith("deps."):
                msg = f"${{{ref}}} names {ref[5:]!r}, which is not in deps"
            else:
                msg = f"${{{ref}}} names {ref[7:]!r}, which is not in params"
            problems.append(("cmd", msg))
        return problems

    def render(self, ctx: BuildContext) -> str:
        paths = {}
        for field_inputs in ctx.inputs.values():
            for item in field_inputs if isinstance(field_inputs, list) else [field_inputs]:
                paths[item.name] = item.location

        def substitute(match: re.Match) -> str:
            ref = match.group(1).strip()
            if ref == "out":
                return shlex.quote(str(ctx.out))
            if ref.startswith("deps."):
                return shlex.quote(str(paths[_dep_named(ref[5:], paths)]))
            value = ctx.params["params"][ref[7:]]
            return shlex.quote(value if isinstance(value, str) else str(value))

        return _PLACEHOLDER.sub(substitute, ctx.params["cmd"])

    def build(self, ctx: BuildContext) -> None:
        command = self.render(ctx)
        env = dict(os.environ)
        env.update(ctx.params["env"])
        env["RECBUILD_OUT"] = str(ctx.out)
        ctx.log.info("$ %s", command)
        returncode, text = _run_logged(["/bin/sh", "-c", command], ctx, env)
        if returncode != 0:
            tail = text.strip().splitlines()[-_TAIL_LINES:]
            shown = ("; last output: " + " | ".join(tail)) if tail else " (no output)"
            status = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
            raise BuildError(f"command {status}{shown}")
