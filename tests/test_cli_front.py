"""The command line as Make and DVC users type it: shared options before the subcommand, -C DIR, a
lock conflict's own exit code and --wait, status --check / make --question for CI, explain with
several targets, --help texts, and the Ctrl-C message on a terminal with live progress lines."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from recbuild.cli.parser import build_parser

RECIPE = """
version: 1
sources:
  raw: {path: data/raw.txt}
artifacts:
  a: {kind: command, deps: [raw], cmd: "cp ${deps.raw} ${out}/a"}
  b: {kind: command, deps: [a], cmd: "cp ${deps.a}/a ${out}/b"}
"""


@pytest.fixture
def chain(project):
    project.write("data/raw.txt", "v1\n")
    project.recipe(RECIPE)
    return project


def _wait_for(path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def test_shared_options_before_the_subcommand(chain):
    chain.recipe(RECIPE, name="other.yaml")
    (chain.path / "recbuild.yaml").unlink()
    result = chain.run("-f", "other.yaml", "status")
    assert result.code == 0, result.err
    assert re.search(r"^a\s+command\s+missing", result.out, re.M), result.out
    # --set on both sides adds up; -q before the subcommand quiets it
    built = chain.run("-q", "--set", "artifacts.a.cmd=echo x > ${out}/a", "-f", "other.yaml", "make")
    assert built.code == 0 and built.out == "", (built.out, built.err)
    assert chain.read("build/a/a") == "x\n"
    twice = chain.run("-f", "other.yaml", "status", "-f", "recbuild.yaml")
    assert twice.code == 2 and twice.err.strip() == (
        "error: recbuild: -f given twice, as other.yaml and recbuild.yaml; give it once")
    no_recipe = chain.run("-f", "other.yaml", "templates")
    assert no_recipe.code == 2 and "templates: reads no recipe, so -f does not apply to it" in no_recipe.err


def test_dash_C_changes_directory_like_make(chain, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = subprocess.run([sys.executable, "-m", "recbuild.cli", "-C", str(chain.path), "make", "b"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (chain.path / "build/b/b").read_text() == "v1\n"
    assert not (elsewhere / "build").exists()
    after = chain.run("status", "-C", str(chain.path))  # after the subcommand too; cwd restored after
    assert after.code == 0 and os.getcwd() == str(chain.path)
    missing = chain.run("-C", str(tmp_path / "nowhere"), "status")
    assert missing.code == 2
    assert missing.err.strip() == f"error: recbuild: -C {tmp_path / 'nowhere'}: No such file or directory"


def test_status_check_and_make_question_exit_1_when_anything_would_build(chain):
    check = chain.run("status", "--check")
    assert check.code == 1 and "2 artifacts would build: a, b" in check.out, check.out
    question = chain.run("make", "--question")
    assert question.code == 1 and question.out == "" and question.err == ""
    assert not (chain.path / "build/a").exists()  # --question builds nothing
    assert chain.run("make").code == 0
    check = chain.run("status", "--check")
    assert check.code == 0 and "everything is up to date" in check.out
    assert chain.run("make", "--question").code == 0
    chain.write("data/raw.txt", "v2\n")
    assert chain.run("status", "--check", "b").code == 1
    assert chain.run("make", "--question", "a").code == 1
    assert chain.run("status").code == 0  # without --check, status is a report: exit 0


def test_explain_takes_several_targets(chain):
    assert chain.run("make").code == 0
    chain.write("data/raw.txt", "v2\n")
    result = chain.run("explain", "a", "b")
    assert result.code == 0, result.err
    blocks = result.out.split("\n\n")
    assert len(blocks) == 2, result.out
    assert blocks[0].startswith("a (command, ") and "raw" in blocks[0]
    assert blocks[1].startswith("b (command, ") and "upstream that will rebuild first:" in blocks[1]
    unknown = chain.run("explain", "a", "nope")
    assert unknown.code == 2 and "unknown target 'nope'" in unknown.err


def test_a_lock_conflict_has_its_own_exit_code_and_wait_waits(project):
    # the first make holds the lock until the test lets it go (no race with a loaded machine)
    project.recipe("""
        version: 1
        artifacts:
          a: {kind: command, cmd: "touch started; for i in $(seq 1200); do [ -e release ] && break; sleep 0.1; done; echo a > ${out}/a"}
    """)
    first = project.spawn("make")
    try:
        _wait_for(project.path / "started")
        second = project.subprocess_run("make")
        assert second.code == 75, second.err
        assert "another recbuild is building in this workdir (pid" in second.err
        assert "make --wait" in second.err
        waiting = project.spawn("make", "--wait", "120")
        time.sleep(1.0)
        assert waiting.poll() is None  # still waiting for the lock
        (project.path / "release").touch()
        out1, err1 = first.communicate(timeout=60)
        out2, err2 = waiting.communicate(timeout=120)
    finally:
        (project.path / "release").touch()
        first.wait(timeout=60)
    assert first.returncode == 0, err1
    assert waiting.returncode == 0, err2
    assert "up to date" in out2  # it waited for the first make, then found a built
    assert "--wait" in build_parser().format_help() and "75" in build_parser().format_help()


def test_every_subcommand_help_has_a_description_and_every_argument_help(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert len(sub.choices) >= 14
    for name, command in sub.choices.items():
        assert command.description and command.description[0].isupper(), name
        for action in command._actions:
            assert action.help, f"recbuild {name}: {action.option_strings or action.metavar} has no help"
    with pytest.raises(SystemExit):
        parser.parse_args(["graph", "--help"])
    text = capsys.readouterr().out
    assert "Print the artifact graph." in text and "mermaid (default" in text


def _uncoloured(data: bytes) -> bytes:
    return re.sub(rb"\x1b\[[0-9;]*m", b"", data)  # colours only; cursor moves and erases stay


def _read_until(fd: int, pattern: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.time() + timeout
    while pattern not in _uncoloured(data) and time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_ctrl_c_message_starts_on_a_clean_line_after_the_live_progress(project):
    """On a terminal the live line has no newline at its end; the message must not be glued onto it."""
    pty = pytest.importorskip("pty")
    project.recipe("""
        version: 1
        artifacts:
          slow: {kind: command, cmd: "sleep 30; echo s > ${out}/s"}
    """)
    pid, fd = pty.fork()
    if pid == 0:  # the child: recbuild make on the pty, as a user's terminal
        os.chdir(project.path)
        os.environ.pop("NO_COLOR", None)
        os.environ["TERM"] = "xterm"
        os.execv(sys.executable, [sys.executable, "-m", "recbuild.cli", "make"])
    try:
        seen = _read_until(fd, b"slow (command)", 60)
        assert b"slow (command)" in _uncoloured(seen), seen
        seen += _read_until(fd, b"\x00never", 1.0)  # a few refreshes of the live line
        os.kill(pid, signal.SIGINT)
        seen += _read_until(fd, b"completed artifacts are kept", 30)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 130
    plain = _uncoloured(seen)
    at = plain.rindex(b"error:")
    before = plain[:at]
    # the live line was taken down (erased) before the message, or the message starts a new line
    last_live = before.rindex(b"slow (command)")
    between = before[last_live:]
    assert re.search(rb"\x1b\[2K|\x1b\[\d*[AF]|\r\n|\n", between) and (
        before.endswith((b"\n", b"\r", b"\x1b[2K")) or re.search(rb"(\x1b\[2K|\x1b\[\d*[AF]|\r)$", before)), between
