"""`kind: recall_eval` — recall@k / hitrate@k of a faiss_index against ground truth, beside exact search,
or of a TDM tree searched with its model.

Two-tower (faiss) mode: `index`, and queries either from a `user_embeddings` table (user vectors + a
ground-truth column) or from running the user tower of `towers` over a `queries` table.
TDM mode: `tree` + `model` (an exported TDM model: user features + node id `item_id` -> `probs`) +
`queries`: layer-wise beam search (recbuild.retrieval.recall.tdm_beam_search); item features the
model reads besides the id come from the tree's node_feature table.

metrics.json is deterministic (the artifact must rebuild to identical bytes, DESIGN.md section 4),
so it holds no wall-clock time. Query latency is measured and written to the build log instead;
metrics.json carries a deterministic proxy, ``search.distances_per_query`` (faiss's own count of
distance computations), which moves with nprobe / ef_search exactly as latency does.
"""

from __future__ import annotations

from recbuild.builders.base import BuildContext, Builder
from recbuild.errors import BuildError, InputError
from recbuild.retrieval.memory import budget_schema


class RecallEvalBuilder(Builder):
    kind = "recall_eval"
    uses_torch = True
    version = "1"
    toolchain = ("faiss", "torch", "numpy", "machine")
    description = "recall@k / hitrate@k of a FAISS index (vs exact search) or of a TDM tree + model"
    reference_fields = ("user_embeddings", "towers", "queries", "index", "item_embeddings", "tree", "model",
                        "baseline_data")
    headline = ("recall@k", "index_recall@k", "baseline.random.recall@k", "baseline.popularity.recall@k")
    metric_labels = {"recall@k": "index search", "hitrate@k": "index search"}
    metric_docs = {
        "recall@k": "retrieval recall@k through the built index: per request, the share of its ground-truth "
                    "items in the index's top k; mean over requests (macro average)",
        "hitrate@k": "ground-truth items found in the index's top k over all ground-truth items (TorchEasyRec's "
                     "hitrate)",
        "exact.recall@k": "recall@k of an exact (brute-force) search over the same vectors: the index's ceiling",
        "exact.hitrate@k": "hitrate@k of the exact search",
        "index_recall@k": "overlap of the index's top k with the exact top k: 1.0 = the index loses nothing",
        "requests": "requests evaluated (rows grouped by request_column)",
        "requests_without_gt": "requests skipped: no positive ground truth",
        "gt_items": "distinct (request, item) ground-truth pairs",
        "search.distances_per_query": "vector distances faiss computed per query (deterministic stand-in for latency)",
        "search.scored_per_query": "TDM: tree nodes the model scored per query",
        "search.fewer_than_k": "per k, the queries the index returned fewer than k results for (recorded only "
                               "when some did): their recall@k counts misses the search could not find",
        "baseline.random.recall@k": "recall@k of k items drawn at random from the index (expected value: k / items)",
        "baseline.random.hitrate@k": "hitrate@k of k random items (k / items)",
        "baseline.popularity.recall@k": "recall@k of the k items most clicked in baseline_data, "
                                        "the same list for every request: a model that learns tastes beats it",
        "baseline.popularity.hitrate@k": "hitrate@k of the k most clicked items of baseline_data",
        "baseline.popularity.items": "items of the index clicked at least once in baseline_data",
        "queries_sampled.of": "with max_queries: requests there were before the seeded sample",
    }
    schema = {
        "type": "object",
        "properties": {
            "index": {"type": "string", "description": "faiss_index artifact"},
            "user_embeddings": {"type": "string",
                                "description": "table with user vectors and the gt column"},
            "towers": {"type": "string", "description": "towers artifact: its user/ tower embeds `queries`"},
            "queries": {"type": "string", "description": "table the user tower reads (with the gt column)"},
            "item_embeddings": {"type": "string",
                                "description": "item vectors for the exact baseline (default: the "
                                               "vectors stored in the index, when it keeps them)"},
            "k": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1,
                  "default": [10, 50, 200]},
            "gt_column": {"type": "string", "default": "item_id",
                          "description": "ground-truth item id(s): an id, a list, or a delimited string"},
            "gt_delimiter": {"type": "string", "minLength": 1, "default": ","},
            "request_column": {"type": ["string", "null"], "default": "user_id",
                               "description": "rows sharing it form one request; null: each row is one"},
            "label_column": {"type": ["string", "null"], "default": "label",
                             "description": "rows with label <= 0 are not ground truth; ignored when "
                                            "the table has no such column"},
            "embedding_column": {"type": "string", "default": "user_tower_emb"},
            "item_id_column": {"type": "string", "default": "item_id"},
            "item_embedding_column": {"type": "string", "default": "item_tower_emb"},
            "nprobe": {"type": ["integer", "null"], "minimum": 1, "default": None,
                       "description": "IVF lists probed (default: the index's own)"},
            "ef_search": {"type": ["integer", "null"], "minimum": 1, "default": None,
                          "description": "HNSW search breadth (default: the index's own)"},
            "batch_size": {"type": "integer", "minimum": 1, "default": 4096},
            "baseline_data": {"type": "string",
                              "description": "two-tower mode: a table of clicks (gt_column; rows with "
                                             "label <= 0 left out), usually the training data: records "
                                             "the random and popularity baselines beside the figures "
                                             "(baseline.random.recall@k, baseline.popularity.recall@k)"},
            "max_queries": {"type": ["integer", "null"], "minimum": 1, "default": None,
                            "description": "evaluate a seeded sample of at most this many requests "
                                           "(recorded in metrics.json as queries_sampled); null: all"},
            "seed": {"type": "integer", "minimum": 0, "default": 42, "description": "of the max_queries sample"},
            "memory_budget": budget_schema("item vectors the exact baseline holds at once"),
            "tree": {"type": "string", "description": "TDM mode: tdm_tree artifact"},
            "model": {"type": "string", "description": "TDM mode: exported TDM model (outputs probs)"},
            "tdm_retrieval_num": {"type": "integer", "minimum": 1, "default": 200,
                                  "description": "TDM mode: leaves retrieved per request"},
            "beam_width": {"type": ["integer", "null"], "minimum": 1, "default": None,
                           "description": "TDM mode: nodes kept per level (default 2 x tdm_retrieval_num)"},
        },
    }

    def check(self, params):
        if params.get("tree") or params.get("model"):
            problems = [(f, "TDM mode (tree + model + queries) needs it")
                        for f in ("tree", "model", "queries") if not params.get(f)]
            problems += [(f, "is for the two-tower mode, not TDM (tree + model)")
                         for f in ("index", "user_embeddings", "towers", "item_embeddings", "baseline_data")
                         if params.get(f)]
            return problems
        if not params.get("index"):
            return [("index", "recall_eval needs index (two-tower) or tree + model (TDM)")]
        has_table = bool(params.get("user_embeddings"))
        has_tower = bool(params.get("towers")) or bool(params.get("queries"))
        if has_table and has_tower:
            return [("user_embeddings", "give either user_embeddings, or towers + queries, not both")]
        if not has_table and not (params.get("towers") and params.get("queries")):
            missing = "queries" if params.get("towers") else "towers" if params.get("queries") else \
                "user_embeddings"
            return [(missing, "recall_eval needs user_embeddings, or towers + queries")]
        return []

    def build(self, ctx: BuildContext) -> None:
        import json

        from recbuild.retrieval import faiss_index as fi
        from recbuild.retrieval import recall
        from recbuild.retrieval.memory import parse_budget

        p = ctx.params
        for path, message in self.check(p):
            raise BuildError(f"{path}: {message}")
        if p.get("tree"):
            return _tdm_recall(ctx, p)
        ks = sorted(set(p["k"]))
        index_input = ctx.input("index")
        index, id_mapping = fi.load_index(index_input.path, mmap=True)
        meta = fi.read_meta(index_input.path)
        progress = ctx.progress(None, "", "reading queries")
        requests = _collect_requests(ctx, p)
        queries, gt, skipped, _ = requests.finished()
        sampled = None
        picked = recall.sample_requests(len(gt), p["max_queries"], p["seed"])
        if picked is not None:
            sampled = {"max_queries": p["max_queries"], "seed": p["seed"], "of": len(gt)}
            queries, gt = queries[picked], [gt[i] for i in picked]
        if queries.shape[1] != index.d:
            raise InputError(f"user vectors have dimension {queries.shape[1]} but the index "
                             f"{index_input.name!r} has {index.d}; they come from different models")
        if max(ks) > index.ntotal:
            raise InputError(f"k={max(ks)} is larger than the {index.ntotal} items in index "
                             f"{ctx.input('index').name!r}; lower k (recall@k needs at least k items)")
        top = max(ks)
        fi.set_search_params(index, p.get("nprobe"), p.get("ef_search"))
        fi.tune_blas_threshold(index.d)
        progress.phase(f"index search, {len(queries):,} queries")
        approx, elapsed, cost = recall.counted_search(index, queries, top)
        short = recall.short_results(approx, ks)
        truth = recall.GroundTruth(gt)

        budget = parse_budget(p["memory_budget"], f"recall_eval {ctx.name}: memory_budget")
        chunk_rows = max(1 << 12, budget // (4 * 4 * index.d))  # a chunk, its flat index, a batch
        chunks, baseline = _exact_chunks(ctx, p, index, id_mapping, chunk_rows)
        exact = None
        if chunks is not None:
            progress.phase("exact search (the baseline)")
            exact = recall.exact_top_k(chunks, queries, top, meta["metric"])
        # Both result lists' ids are looked up in one pass over id_mapping.
        approx_codes, *exact_codes = _faiss_codes([approx] + ([exact] if exact is not None else []),
                                                  id_mapping, truth)
        metrics = truth.metrics(approx_codes, ks)
        exact_metrics = None
        if exact is not None:
            exact_metrics = truth.metrics(exact_codes[0], ks)
            metrics.update(recall.overlap_at_k(approx, exact, ks))
        search = {"index_type": meta["type"], "metric": meta["metric"], "top_k": int(top),
                  "distances_per_query": cost}
        if hasattr(index, "nprobe"):
            search["nprobe"] = int(index.nprobe)
        if fi.index_kind(index) == "HNSWFlat":
            search["ef_search"] = int(index.hnsw.efSearch)
        if short:  # (only then: a complete search's metrics.json keeps its bytes)
            search["fewer_than_k"] = short
            for line in _short_warnings(short, len(queries), index, meta):
                ctx.warn(line)
        doc = {**metrics, "exact": exact_metrics, "exact_baseline": baseline, "k": ks,
               "requests": len(gt), "requests_without_gt": skipped,
               "gt_items": int(sum(len(g) for g in gt)), "search": search}
        if p.get("baseline_data"):
            progress.phase("baselines (random, popularity)")
            doc["baseline"] = _baselines(ctx, p, truth, id_mapping, ks)
        if sampled:  # (only then: metrics of full evaluations keep their bytes)
            doc["queries_sampled"] = sampled
        (ctx.out / "metrics.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n",
                                              encoding="utf-8")
        ctx.meta.update({k: v for k, v in metrics.items()})
        single = _single_query_ms(index, queries, top)
        ctx.log.info("recall_eval %s: %d requests, top-%d batch search %.2f ms/query (%.0f QPS), "
                     "single query p50 %.2f ms; %s", ctx.name, len(gt), top,
                     1e3 * elapsed / len(gt), len(gt) / max(elapsed, 1e-9), single,
                     ", ".join(f"{k}={v}" for k, v in metrics.items()))


def _short_warnings(short: dict, n_queries: int, index, meta) -> list[str]:
    """One line per k that some queries did not reach: recall@k is then not what it says."""
    knob = "nprobe" if hasattr(index, "nprobe") else "ef_search" if meta["type"] == "HNSWFlat" else None
    fix = f"raise {knob} (recall_eval's {knob}, or the index's)" if knob else "lower k"
    return [f"recall@{k}: {facts['queries']} of {n_queries} queries got fewer than {k} results from the "
            f"index (fewest {facts['fewest']}), so recall@{k} counts misses it could not have found; "
            f"{fix}, or lower k" for k, facts in short.items()]


def _baselines(ctx: BuildContext, p, truth, id_mapping, ks) -> dict:
    """What a model has to beat: k items at random (expected recall k / items), and the k items
    clicked most often in baseline_data (ties by id), the same list for every request."""
    import collections

    import numpy as np

    from recbuild.retrieval import recall
    from recbuild.retrieval.embeddings_io import iter_batches, parquet_files, require_columns, table_info

    n_items = len(id_mapping)
    random = {}
    for k in ks:
        random[f"recall@{k}"] = random[f"hitrate@{k}"] = round(min(k, n_items) / n_items, recall.ROUND)
    source = ctx.input("baseline_data")
    where = f"baseline_data {source.name!r}"
    info = table_info(parquet_files(source), where)
    label_column = p["label_column"] if p["label_column"] in info.schema.names else None
    columns = [p["gt_column"]] + ([label_column] if label_column else [])
    require_columns(info, columns, where)
    clicks: collections.Counter = collections.Counter()
    for _, batch in iter_batches(info, columns, p["batch_size"]):
        rows = recall.gt_lists(batch.column(p["gt_column"]), p["gt_delimiter"])
        keep = batch.column(label_column).fill_null(0).to_numpy(zero_copy_only=False) > 0 \
            if label_column else np.ones(len(rows), dtype=bool)
        clicks.update(item for row, kept in zip(rows, keep) if kept for item in row)
    # the clicked items the index holds, in one pass over id_mapping (never the catalogue as a set)
    in_index = id_mapping.members(clicks)
    counts = collections.Counter({item: n for item, n in clicks.items() if item in in_index})
    ranking = sorted(counts, key=lambda item: (-counts[item], item))[:max(ks)]
    codes = np.full(max(ks), -1, dtype=np.int64)
    codes[:len(ranking)] = truth.codes(ranking)
    popular = truth.metrics(np.broadcast_to(codes, (len(truth.sizes), max(ks))), ks)
    return {"random": random, "popularity": {**popular, "items": len(counts)}}


def _faiss_codes(results, id_mapping, truth) -> list:
    """Ground-truth codes of each array of faiss search results (-1 where faiss returned no id):
    only the ids the searches returned are turned into strings, once each, in one lookup."""
    import numpy as np

    flat = np.concatenate([r.reshape(-1) for r in results])
    distinct, inverse = np.unique(flat, return_inverse=True)
    strings = id_mapping.take(distinct)
    codes = truth.codes([None if v is None else str(v) for v in strings.tolist()])[inverse]
    bounds = np.cumsum([0] + [r.size for r in results])
    return [codes[lo:hi].reshape(r.shape) for r, lo, hi in zip(results, bounds[:-1], bounds[1:])]


def _collect_requests(ctx: BuildContext, p):
    """Read user vectors (from a table or by running the user tower) and group rows into requests."""
    from recbuild.retrieval import recall
    from recbuild.retrieval.embeddings_io import (embedding_matrix, iter_batches, parquet_files,
                                                  require_columns, table_info)

    gt_column = p["gt_column"]
    request_column = p["request_column"]
    label_column = p["label_column"]
    from_table = bool(p.get("user_embeddings"))
    source = ctx.input("user_embeddings" if from_table else "queries")
    where = f"{'user_embeddings' if from_table else 'queries'} {source.name!r}"
    info = table_info(parquet_files(source), where)
    if label_column and label_column not in info.schema.names:
        ctx.log.info("recall_eval %s: no %r column in %s; every row counts as ground truth",
                     ctx.name, label_column, source.name)
        label_column = None
    wanted = [gt_column] + ([request_column] if request_column else []) + \
        ([label_column] if label_column else [])
    tower = None
    if from_table:
        wanted.append(p["embedding_column"])
    else:
        from recbuild.ml import predictor

        towers = ctx.input("towers")
        tower = predictor.load_tower(towers.path / "user")
        wanted += [s.column for s in tower.specs]
    columns = list(dict.fromkeys(wanted))
    require_columns(info, columns, where)
    requests = recall.Requests()
    for offset, batch in iter_batches(info, columns, p["batch_size"]):
        if from_table:
            vectors = embedding_matrix(batch.column(p["embedding_column"]),
                                       where, offset)
        else:
            vectors = _run_tower(tower, batch, where, offset)
        keys = batch.column(request_column).cast("string").to_pylist() if request_column else None
        positive = None
        if label_column:
            positive = batch.column(label_column).fill_null(0).to_numpy(zero_copy_only=False) > 0
        requests.add(keys, recall.gt_lists(batch.column(gt_column), p["gt_delimiter"]),
                     vectors, positive, offset)
    return requests


def _run_tower(tower, batch, where: str, offset: int):
    import numpy as np
    import torch

    from recbuild.ml import feature_io

    with torch.inference_mode():
        out = tower.module(feature_io.batch_to_inputs(batch, tower.specs, offset))
    if "user_tower_emb" not in out:
        raise BuildError(f"the user tower returned {sorted(out)}, not user_tower_emb; rebuild the towers")
    vectors = out["user_tower_emb"].detach().cpu().numpy().astype(np.float32, copy=False)
    if not np.isfinite(vectors).all():
        raise InputError(f"{where}: the user tower gave NaN/inf from row {offset}")
    return vectors


def _exact_chunks(ctx: BuildContext, p, index, id_mapping, chunk_rows: int):
    """(chunks of (item vectors, faiss ids) for the exact baseline, where they come from), read
    ``chunk_rows`` at a time; (None, None) when there are none."""
    import numpy as np

    from recbuild.retrieval import faiss_index as fi
    from recbuild.retrieval.embeddings_io import EmbeddingTable, id_strings

    if p.get("item_embeddings"):
        source = ctx.input("item_embeddings")
        table = EmbeddingTable(source, p["item_id_column"], p["item_embedding_column"],
                               where=f"item_embeddings {source.name!r}")
        if table.num_rows != len(id_mapping):
            raise InputError(f"item_embeddings {source.name!r} holds {table.num_rows} rows but the index "
                             f"{len(id_mapping)}; build the index from these embeddings")

        def table_chunks():
            held, vectors, start = 0, [], 0
            for part in table.batches(min(chunk_rows, 1 << 16), dim=index.d):
                if not id_mapping.equals_slice(part.row_offset, id_strings(part.ids)):
                    raise InputError(f"item_embeddings {source.name!r} does not hold the same ids in the same "
                                     "order as the index's id_mapping; build the index from these embeddings")
                vectors.append(part.vectors)
                held += len(part.vectors)
                if held >= chunk_rows:
                    yield np.concatenate(vectors), np.arange(start, start + held, dtype=np.int64)
                    start, held, vectors = start + held, 0, []
            if held:
                yield np.concatenate(vectors), np.arange(start, start + held, dtype=np.int64)

        return table_chunks(), "item_embeddings"
    chunks = fi.iter_vectors(index, chunk_rows)
    if chunks is None:
        ctx.log.info("recall_eval %s: %s index stores compressed vectors; give item_embeddings for "
                     "the exact baseline", ctx.name, fi.index_kind(index))
        return None, None
    return chunks, "index_vectors"


def _single_query_ms(index, queries, k: int) -> float:
    """Median wall time of one-query searches (for the log only)."""
    import statistics
    import time

    times = []
    for row in range(min(len(queries), 50)):
        started = time.perf_counter()
        index.search(queries[row:row + 1], k)
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


def _tdm_recall(ctx: BuildContext, p) -> None:
    """Beam-search the tree with the TDM model for every request; write metrics.json."""
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from recbuild.ml import feature_io, predictor
    from recbuild.retrieval import recall, tree_io
    from recbuild.retrieval.embeddings_io import iter_batches, parquet_files, require_columns, table_info

    tree_dir = ctx.input("tree").path
    tree = tree_io.read_serving_tree(tree_dir / tree_io.SERVING_TREE)
    nodes = pq.read_table(tree_dir / tree_io.NODE_FEATURE)
    if nodes.num_rows != len(tree.codes):
        raise InputError(f"{tree_dir}: node_feature has {nodes.num_rows} rows, serving_tree "
                         f"{len(tree.codes)} nodes; rebuild the tree")
    model = predictor.load_tower(ctx.input("model").path)
    user_specs = [s for s in model.specs if s.group == "user"]
    item_specs = [s for s in model.specs if s.group == "item"]
    only = item_specs[0] if len(item_specs) == 1 else None
    id_spec = next((s for s in item_specs if s.name == "item_id"), only)
    if id_spec is None:
        raise InputError("the TDM model has no item feature named item_id (the node id it scores)")
    node_columns = {id_spec.column: nodes.column(0)}  # node_feature's first column is the node id
    for spec in item_specs:
        if spec is not id_spec:
            if spec.column not in nodes.column_names:
                raise InputError(f"the TDM model reads item feature {spec.column!r}, which the tree's "
                                 f"node_feature lacks (has {nodes.column_names}); add it to attr_columns")
            node_columns[spec.column] = nodes.column(spec.column)
    node_table = pa.table(node_columns)

    progress = ctx.progress(None, "", "reading queries")
    source = ctx.input("queries")
    where = f"queries {source.name!r}"
    info = table_info(parquet_files(source), where)
    gt_column, request_column = p["gt_column"], p["request_column"]
    label_column = p["label_column"]
    if label_column and label_column not in info.schema.names:
        label_column = None
    user_columns = list(dict.fromkeys(s.column for s in user_specs))
    columns = list(dict.fromkeys([gt_column, *user_columns] + ([request_column] if request_column else [])
                                 + ([label_column] if label_column else [])))
    require_columns(info, columns, where)
    requests = recall.Requests()
    user_batches = []
    for offset, batch in iter_batches(info, columns, p["batch_size"]):
        keys = batch.column(request_column).cast("string").to_pylist() if request_column else None
        positive = None
        if label_column:
            positive = batch.column(label_column).fill_null(0).to_numpy(zero_copy_only=False) > 0
        requests.add(keys, recall.gt_lists(batch.column(gt_column), p["gt_delimiter"]), None,
                     positive, offset)
        user_batches.append(batch.select(user_columns))
    _, gt, skipped, first_rows = requests.finished()
    users = pa.Table.from_batches(user_batches).take(pa.array(first_rows))
    # Users and nodes converted once; each scoring chunk gathers rows of them (conversion is
    # row by row, so this is what converting the gathered rows would give).
    user_arrays = feature_io.batch_to_numpy(users, user_specs)
    node_arrays = feature_io.batch_to_numpy(node_table, item_specs)
    scored = [0]

    def score(query_index, node_index):
        out = np.empty(len(query_index), dtype=np.float64)
        chunk = 65536
        for lo in range(0, len(query_index), chunk):
            q, n = query_index[lo:lo + chunk], node_index[lo:lo + chunk]
            inputs = {name: values[q] for name, values in user_arrays.items()}
            inputs.update({name: values[n] for name, values in node_arrays.items()})
            with torch.inference_mode():
                result = model.module(feature_io.numpy_to_tensors(inputs))
            if "probs" not in result:
                raise InputError(f"the TDM model returned {sorted(result)}, not probs")
            out[lo:lo + len(q)] = result["probs"].detach().cpu().numpy().reshape(-1)
        scored[0] += len(query_index)
        progress.advance(len(query_index))
        return out

    n_ret = p["tdm_retrieval_num"]
    beam = p.get("beam_width") or 2 * n_ret
    progress.phase(f"beam search, {len(gt):,} queries, {tree.num_levels} levels", None, "scores")
    found = recall.tdm_beam_search(tree, score, len(gt), n_ret, beam)
    # leaves come best first, so recall@k for k <= retrieval_num is a prefix of the same search
    ks = sorted({min(int(k), n_ret) for k in p["k"]})
    truth = recall.GroundTruth(gt)
    metrics = truth.metrics(recall.leaf_codes(found, truth, n_ret), ks)
    doc = {**metrics, "k": ks, "requests": len(gt), "requests_without_gt": skipped,
           "gt_items": int(sum(len(g) for g in gt)),
           "search": {"type": "tdm_beam_search", "retrieval_num": n_ret, "beam_width": beam,
                      "levels": tree.num_levels, "n_cluster": tree.k,
                      "scored_per_query": round(scored[0] / len(gt), 2)}}
    (ctx.out / "metrics.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    ctx.meta.update(metrics)
    ctx.log.info("recall_eval %s (TDM): %d requests, %s", ctx.name, len(gt),
                 ", ".join(f"{k}={v}" for k, v in metrics.items()))
