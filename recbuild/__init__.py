"""recbuild: Make for recommender deployment artifacts.

Layers, top to bottom (docs/internals.md): cli/ ui/ report/ (the front), build/ (the build
system), builders/ (artifact kinds: the bridge), tzrec/, ml/, retrieval/ (the work), common/ and
errors (used by all). A module imports only from its own package or a layer below it.
"""

__version__ = "0.1.0"

from recbuild import _moved  # noqa: E402

_moved.install()  # old import paths (recbuild.training, ...) warn and forward for one release
