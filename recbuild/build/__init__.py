"""The build system: recipe -> graph -> plan -> run, and the state it keeps.

  yamlsrc, recipe, recipe_cache, matrix, schema   reading and validating a recipe (parsing is cached)
  graph                                           artifacts, their references and sources as a DAG
  hashing, sources, manifest                      content digests, source state, MANIFEST.json
  workspace                                       the workdir: keys, staleness, publish, ownership
  engine                                          plans and runs steps (through doit for full builds)
  lock, cache, cache_ops                          one writer per workdir; the shared artifact cache
  metrics                                         metrics.json files and the metrics history

May import: recbuild.builders (the registry and the Builder interface) and what lies below it.
Never imports the front (cli, ui, report).
"""
