"""Retrieval artifacts: FAISS indexes, TDM trees, recall metrics (the serving bundle is in ml/).

Modules (each one job):
  embeddings_io  stream an embedding table (fixed_size_list / list<double> / comma string) in batches
  faiss_index    build, write and search FAISS indexes deterministically
  tdm_tree/      TDM tree codes: init (by category) and learnt (level-by-level balanced k-means)
  tree_io/       TorchEasyRec's tree files (serving_tree, node/edge tables, node_feature) and a parser
  recall         recall@k / hitrate@k, exact-search baseline, TDM beam search
  threads        how many threads a CPU-heavy step should use on a busy machine

numpy is imported at module level here; faiss, torch and pyarrow only inside functions where the
module is also used at recipe-load time.
"""
