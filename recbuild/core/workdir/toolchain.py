"""The toolchain that decides an artifact's bytes: installed distributions' versions, the Python
minor version and the machine architecture, as each builder declares them (``Builder.toolchain``).

They are part of the artifact key, so a CI runner with another torch neither calls an artifact
built by the old one up to date nor restores it from the shared cache, and every manifest records
the versions that built it (provenance).

Versions are read from the installed distributions' metadata folder names on ``sys.path``
(``torch-2.13.0+cpu.dist-info``), the first match winning as it does for ``importlib.metadata``,
once per process. Not ``importlib.metadata`` itself: its import costs 50-100 ms, more than a whole
no-op make may spend, while listing the ``sys.path`` folders takes under a millisecond.
"""

from __future__ import annotations

import os
import re
import sys

PYTHON = "python"  # the interpreter's major.minor
MACHINE = "machine"  # the processor architecture (x86_64, aarch64): float kernels differ across them

# A toolchain name that stands for any one of several distributions (the first installed wins)
ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss"),
}

_METADATA_FOLDER = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)(?:-py\d[\w.]*)?\.(?:dist|egg)-info$")
_found: dict[str, str] | None = None
_versions: dict[str, str] = {}


def normalized(name: str) -> str:
    """A distribution name as metadata folders spell it (PEP 503 normalisation, '_' for runs)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _installed() -> dict[str, str]:
    """normalized distribution name -> version, the first on sys.path winning."""
    global _found
    if _found is None:
        found: dict[str, str] = {}
        for entry in sys.path:
            try:
                names = os.listdir(entry or ".")
            except OSError:
                continue
            for name in names:
                match = _METADATA_FOLDER.match(name)
                if match:
                    found.setdefault(normalized(match["name"]), match["version"])
        _found = found
    return _found


def distribution_version(name: str) -> str:
    """The installed version of distribution ``name``, or 'not installed'."""
    if name not in _versions:
        version = _installed().get(normalized(name))
        if version is None:  # e.g. a metadata folder without a version in its name
            try:
                from importlib.metadata import PackageNotFoundError, version as metadata_version

                version = metadata_version(name)
            except (ImportError, PackageNotFoundError, ValueError):
                version = "not installed"
        _versions[name] = version
    return _versions[name]


def fact(name: str) -> str:
    """One toolchain entry's value: a version, 'dist version' for alternatives, or a platform fact."""
    if name == PYTHON:
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    if name == MACHINE:
        return os.uname().machine or "unknown"
    if name in ALTERNATIVES:
        for candidate in ALTERNATIVES[name]:
            version = distribution_version(candidate)
            if version != "not installed":
                return f"{candidate} {version}"
        return "not installed"
    return distribution_version(name)


def facts(names: tuple[str, ...] | list[str]) -> dict[str, str]:
    return {name: fact(name) for name in names}


def forget() -> None:
    """Read the installed distributions again (tests that change sys.path)."""
    global _found
    _found = None
    _versions.clear()
