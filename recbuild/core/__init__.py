"""The build system: recipe -> graph -> plan -> run, and the state it keeps. One sub-package a job,
top to bottom (a sub-package imports only those below it; tests/test_layers.py checks it):

  running/   plans and runs the steps: the engine, its doit adapter, the events the UI renders
  cache/     the shared artifact cache: entries, verified transfers, push / pull / gc
  workdir/   the state of a workdir: content digests, source state, MANIFEST.json, keys and
             staleness, publish and ownership, the lock, the metrics history
  recipe/    reading a recipe: YAML with locations, extends, --set, ${...}, schemas, matrix, the graph

May import recbuild.builders (the registry and the Builder interface) and what lies below it.
Never imports the front (cli, ui, report).
"""
