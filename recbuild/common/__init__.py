"""Leaf utilities any layer may use; they import nothing from recbuild but errors.

  process_tree   run a command whose every descendant dies with recbuild
  ids            stable 63-bit ids for string ids (xxh3), shared by models and indexes; the
                 repeat check of a sorted id column
  sizes          memory sizes: parse "2GB" / "1.5GiB", print bytes
  parquet_batches  a parquet file in batches, one row group read at a time (fixed-size if asked)
"""
