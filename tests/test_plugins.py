"""Third-party kinds through the `recbuild.builders` entry-point group."""

from __future__ import annotations

import sys
import types
from importlib.metadata import EntryPoint

import pytest

import recbuild.builders as registry
from recbuild.builders.base import Builder
from recbuild.errors import RecbuildError


class Echo(Builder):
    kind = "echo"
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

    def build(self, ctx):
        (ctx.out / "echo.txt").write_text(ctx.params["text"])


@pytest.fixture
def plugin(monkeypatch):
    module = types.ModuleType("fake_recbuild_plugin")
    module.Echo = Echo
    monkeypatch.setitem(sys.modules, "fake_recbuild_plugin", module)

    def install(*eps):
        monkeypatch.setattr(registry, "entry_points", lambda group: list(eps))
        registry.all_builders.cache_clear()

    yield install
    registry.all_builders.cache_clear()


def test_plugin_kind_builds_through_the_cli(project, plugin):
    plugin(EntryPoint("echo", "fake_recbuild_plugin:Echo", "recbuild.builders"))
    project.recipe("version: 1\nartifacts:\n  hi: {kind: echo, text: hello}\n")
    result = project.run("make")
    assert result.code == 0, result.err
    assert project.read("build/hi/echo.txt") == "hello"


def test_plugin_cannot_shadow_a_builtin(plugin):
    plugin(EntryPoint("command", "fake_recbuild_plugin:Nope", "recbuild.builders"))
    assert registry.all_builders()["command"].__module__ == "recbuild.builders.command"


def test_broken_plugin_gives_a_clear_error(plugin):
    plugin(EntryPoint("broken", "fake_recbuild_plugin:Missing", "recbuild.builders"))
    builders = registry.all_builders()  # built-ins load without touching plugins
    assert "command" in builders
    with pytest.raises(RecbuildError, match="plugin 'broken' .* failed to load"):
        _ = "broken" in builders


def test_broken_plugin_through_the_cli(project, plugin):
    plugin(EntryPoint("broken", "fake_recbuild_plugin:Missing", "recbuild.builders"))
    project.recipe("version: 1\nartifacts:\n  a: {kind: command, cmd: 'echo > ${out}/x'}\n")
    assert project.run("make").code == 0  # only built-in kinds: the broken plugin is never loaded
    project.recipe("version: 1\nartifacts:\n  a: {kind: broken}\n")
    result = project.run("make")
    assert result.code == 1 and "plugin 'broken'" in result.err and "Traceback" not in result.err


class OldStylePlugin(Builder):
    """Written against recbuild 0.1: a `run` of its own with another meaning, a default it reads
    with .get, and an import through an old module path."""

    kind = "old_style"
    schema = {"type": "object", "properties": {"text": {"type": "string", "default": "hi"}}}

    def run(self, command):  # not Builder.run: the engine must not call this
        raise AssertionError("the engine called the plugin's own run()")

    def build(self, ctx):
        from recbuild.hashing import digest_bytes  # old path: forwards with a DeprecationWarning

        (ctx.out / "text.txt").write_text(ctx.params.get("text", "hi"))
        assert callable(digest_bytes)


def test_plugin_written_for_the_old_layout_still_builds(project, plugin):
    import warnings

    sys.modules["fake_recbuild_plugin"].OldStylePlugin = OldStylePlugin
    plugin(EntryPoint("old_style", "fake_recbuild_plugin:OldStylePlugin", "recbuild.builders"))
    project.recipe("version: 1\nartifacts:\n  hi: {kind: old_style}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result = project.run("make")
    assert result.code == 0, result.err
    assert project.read("build/hi/text.txt") == "hi"
