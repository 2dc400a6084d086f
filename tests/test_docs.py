"""The README and docs/ hold where a test can check them: the test command is CI's, links resolve,
the example error is what the CLI prints, the plain-doit example writes outside the source tree."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def _readme_commands() -> list[str]:
    """The one-line commands of the README's ```bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", _readme(), flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _ci_test_command() -> list[list[str]]:
    """The commands between .ci/run's markers, without the `phase NAME` timing prefix."""
    text = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    block = text.split("# --- readme test command ---\n", 1)[1].split("# --- end ---", 1)[0]
    commands = []
    for line in block.splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            assert tokens[0] == "phase", line
            commands.append(tokens[2:])
    return commands


def test_readme_test_command_is_exactly_what_ci_runs():
    test_commands = [c for c in _readme_commands() if "pytest" in c]
    assert len(test_commands) == 1, test_commands
    readme_parts = [shlex.split(part) for part in test_commands[0].split(" && ")]
    assert readme_parts == _ci_test_command()


def test_ci_makes_its_own_venv():
    text = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"-m venv \"\$work/venv\"", text)
    assert "source \"$work/venv/bin/activate\"" in text


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{doc.name}: link {target} does not resolve"
        assert REPO in path.parents or path == REPO, f"{doc.name}: link {target} leaves the repository"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_stand_on_their_own(doc):
    """No pointers to files outside the repository or to issues a user cannot see."""
    text = doc.read_text(encoding="utf-8")
    assert "../shared" not in text and "DESIGN.md" not in text
    assert "perf_baselines" not in text and "tzrec_formats.md" not in text
    assert not re.search(r"(?<!EasyRec )(?<!TorchEasyRec )\bissue \d+", text), \
        f"{doc.name} cites an issue number by itself"


def test_readme_example_error_is_what_the_cli_prints(project):
    shown = re.search(r"`(recbuild\.yaml:(\d+):(\d+): artifacts\.index\.nlist: [^`]*)`", _readme())
    assert shown, "the README's example error is gone"
    line, col = int(shown.group(2)), int(shown.group(3))
    filler = ["version: 1", "sources:", "  emb: {path: emb.parquet}", "artifacts:", "  index:",
              "    kind: faiss_index", "    embeddings: emb"]
    filler += ["    # comment"] * (line - len(filler) - 1)
    project.write("emb.parquet", "not read by validate\n")
    project.recipe("\n".join(filler + [" " * (col - 1) + "nlist: abc"]) + "\n")
    result = project.run("validate")
    assert result.code == 2
    assert result.err.strip() == f"error: {shown.group(1)}"


def test_readme_doit_example_writes_outside_the_source_tree(tmp_path):
    command = re.search(r"`(doit -f dodo\.py [^`]*)`", _readme()).group(1)
    args = shlex.split(command)
    args = [f"workdir={tmp_path / 'build'}" if a.startswith("workdir=") else a for a in args]
    assert any(a.startswith("workdir=") for a in args), "the README's doit example must set workdir"
    before = {p for p in (REPO / "recipes").iterdir()}
    ran = subprocess.run([sys.executable, "-m", "doit", *args[1:], "items"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (tmp_path / "build" / "items" / "MANIFEST.json").is_file()
    assert {p for p in (REPO / "recipes").iterdir()} == before, "doit wrote into recipes/"


def test_source_paths_named_in_the_docs_exist():
    """A module or folder of recbuild/ named in a doc is there (the layout moves; the docs follow)."""
    missing = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for path in re.findall(r"(?<![\w.])recbuild/[\w/]+(?:\.py)?", doc.read_text(encoding="utf-8")):
            if not (REPO / path).exists():
                missing.append(f"{doc.name}: {path}")
    assert missing == []
