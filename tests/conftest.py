"""Shared fixtures: drive recbuild as a user would, in-process (fast) or as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

# Keep the recipe cache of test runs away from the user's ~/.cache.
os.environ.setdefault("RECBUILD_CACHE_DIR", tempfile.mkdtemp(prefix="recbuild-test-cache-"))

# A test run started in the background (`cmd &` in a script, nohup) inherits SIGINT ignored, and so
# would every recbuild the tests start: the Ctrl-C tests would then test nothing. Python turns SIGINT
# into KeyboardInterrupt only when it was not ignored at start-up, and exec resets a handler (never
# an ignore) to the default: so take SIGINT back here, and the children start as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from recbuild.cli import main  # noqa: E402


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def built(self) -> list[str]:
        return [line.split()[1] for line in self.out.splitlines() if line.strip().startswith("built ")]

    @property
    def restored(self) -> list[str]:
        prefix = "restored from cache "
        return [line.strip()[len(prefix):].split()[0] for line in self.out.splitlines()
                if line.startswith("  " + prefix)]

    @property
    def failed(self) -> list[str]:
        return [line.split()[1] for line in self.out.splitlines() if line.strip().startswith("FAILED ")]

    def one_clear_error(self, code: int) -> str:
        """The one `error:` line of a run that exited ``code`` with no traceback."""
        assert self.code == code, (self.code, self.out, self.err)
        assert "Traceback" not in self.err and "internal error" not in self.err, self.err
        errors = [line for line in self.err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, self.err
        return errors[0]


class Project:
    """A folder with a recipe; `run` calls the CLI entry point there."""

    def __init__(self, path: Path, capsys, monkeypatch):
        self.path = path
        self._capsys = capsys
        self._monkeypatch = monkeypatch

    def write(self, relpath: str, text: str) -> Path:
        target = self.path / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return target

    def recipe(self, text: str, name: str = "recbuild.yaml") -> Path:
        return self.write(name, text)

    def run(self, *args: str) -> Result:
        self._monkeypatch.chdir(self.path)
        self._capsys.readouterr()
        code = main(list(args))
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def spawn(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "recbuild.cli", *args], cwd=self.path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kwargs)

    def subprocess_run(self, *args: str, timeout: float = 120) -> Result:
        proc = self.spawn(*args)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # a hung recbuild must not outlive the test that found it
            proc.communicate()
            raise
        return Result(proc.returncode, out, err)

    def read(self, relpath: str) -> str:
        return (self.path / relpath).read_text(encoding="utf-8")


@pytest.fixture
def project(tmp_path, capsys, monkeypatch) -> Project:
    return Project(tmp_path, capsys, monkeypatch)
