"""Leaf utilities any layer may use; they import nothing from recbuild but errors.

  process_tree   run a command whose every descendant dies with recbuild
  ids            stable 63-bit ids for string ids (xxh3), shared by models and indexes
"""
