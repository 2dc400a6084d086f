"""Inputs digested by meaning (Builder.meaning_fields): an edit that keeps the meaning rebuilds
nothing, one that changes it rebuilds, and the answer is remembered in the workdir so a no-op make
never asks the builder again. (tzrec_train_eval's pipeline.config under the real tzrec:
tests/test_tzrec_pipeline.py.)"""

from __future__ import annotations

import json
import sys
import types
from importlib.metadata import EntryPoint

import pytest

import recbuild.builders as registry
from recbuild.builders.base import Builder
from recbuild.core.workdir.hashing import digest_bytes

CALLS: list[str] = []


class Settings(Builder):
    """Copies the settings that a `key = value` file holds (comments and order do not count)."""

    kind = "settings_copy"
    reference_fields = ("config",)
    path_fields = ("config",)
    meaning_fields = ("config",)
    schema = {"type": "object", "properties": {"config": {"type": "string"}}, "required": ["config"]}

    @staticmethod
    def settings(text: str) -> list[str]:
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return sorted(" = ".join(part.strip() for part in line.split("=", 1)) for line in lines if line)

    @classmethod
    def meaning_digest(cls, field, params, files):
        CALLS.append(field)
        text = files[0].read_text()
        if "unparsable" in text:
            return None
        return "settings:" + digest_bytes("\n".join(cls.settings(text)).encode())

    def build(self, ctx):
        text = ctx.input("config").files[0].read_text()
        (ctx.out / "settings.txt").write_text("\n".join(self.settings(text)) + "\n")


@pytest.fixture
def settings_kind(monkeypatch):
    module = types.ModuleType("fake_meaning_plugin")
    module.Settings = Settings
    monkeypatch.setitem(sys.modules, "fake_meaning_plugin", module)
    monkeypatch.setattr(registry, "entry_points",
                        lambda group: [EntryPoint("settings_copy", "fake_meaning_plugin:Settings", group)])
    registry.all_builders.cache_clear()
    CALLS.clear()
    yield
    registry.all_builders.cache_clear()


RECIPE = "version: 1\nartifacts:\n  copy: {kind: settings_copy, config: app.conf}\n"


def test_a_comment_or_reordering_rebuilds_nothing_and_a_value_change_rebuilds(project, settings_kind):
    project.recipe(RECIPE)
    project.write("app.conf", "# settings\nlr = 0.1\nepochs = 3\n")
    assert project.run("make").built == ["copy"]
    assert len(CALLS) == 1
    manifest = json.loads(project.read("build/copy/MANIFEST.json"))
    assert manifest["inputs"]["config"].startswith("meaning:settings:")

    project.write("app.conf", "epochs=3   # three passes\n\n# the rate\nlr = 0.1\n")
    again = project.run("make")
    assert again.code == 0 and again.built == [], again.out
    assert project.run("status").out.count("up to date") >= 1
    assert len(CALLS) == 2  # the new content was asked once

    project.write("app.conf", "epochs = 4\nlr = 0.1\n")
    explain = project.run("explain", "copy")
    assert "input config (app.conf) changed" in explain.out, explain.out
    assert project.run("make").built == ["copy"]
    assert project.read("build/copy/settings.txt") == "epochs = 4\nlr = 0.1\n"


def test_a_noop_make_does_not_ask_the_builder_again(project, settings_kind):
    project.recipe(RECIPE)
    project.write("app.conf", "lr = 0.1\n")
    assert project.run("make").built == ["copy"]
    asked = len(CALLS)
    for command in ("make", "status", "explain"):
        result = project.run(command, *(["copy"] if command == "explain" else []))
        assert result.code == 0, result.err
    assert len(CALLS) == asked  # each run is a new Workspace: the answer came from the workdir
    assert (project.path / "build" / ".recbuild" / "meanings.json").is_file()

    # the memo is only a memo: lost, it is asked again and nothing rebuilds
    (project.path / "build" / ".recbuild" / "meanings.json").write_text("{not json")
    assert project.run("make").built == []
    assert len(CALLS) == asked + 1


def test_no_meaning_falls_back_to_the_content_digest(project, settings_kind):
    project.recipe(RECIPE)
    project.write("app.conf", "lr = 0.1\n# unparsable\n")
    assert project.run("make").built == ["copy"]
    manifest = json.loads(project.read("build/copy/MANIFEST.json"))
    assert not manifest["inputs"]["config"].startswith("meaning:")
    project.write("app.conf", "lr = 0.1\n# unparsable, still\n")
    assert project.run("make").built == ["copy"]  # bytes decide when the meaning is unknown
