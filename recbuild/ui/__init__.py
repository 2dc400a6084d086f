"""What the user sees in a terminal or a CI log.

  terminal   output levels, tables, the live progress lines and the heartbeat
"""


def __getattr__(name: str):
    # `from recbuild.ui import Terminal` (recbuild.ui was one module before 0.2)
    import importlib
    import warnings

    terminal = importlib.import_module("recbuild.ui.terminal")

    if hasattr(terminal, name):
        warnings.warn(f"recbuild.ui.{name} moved to recbuild.ui.terminal.{name}; the old import path "
                      "stops working in recbuild 0.3", DeprecationWarning, stacklevel=2)
        return getattr(terminal, name)
    raise AttributeError(f"module 'recbuild.ui' has no attribute {name!r}")
