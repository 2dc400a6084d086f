"""TDM's training samples: for each clicked item, its ancestor on every level of the tree as a
positive and uniformly drawn nodes of the same level as negatives."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recbuild.errors import BuildError, InputError
from recbuild.ml.training.data import _Reader


class TreeSampler:
    """Turns clicked items into TDM training samples over a tdm_tree artifact.

    For a clicked item (a leaf), its ancestor on every level 1..depth is a positive and
    ``negatives`` other nodes of the same level, drawn uniformly, are negatives (tzrec's
    layer_num_sample, one count for every level, capped at the level's size - 1). Node inputs
    (the node id as the item id feature, other item features) come from the tree's node_feature
    table, so training sees exactly what beam search will feed the model.
    """

    def __init__(self, tree_dir: Path, item_reader: "_Reader", negatives: int):
        import pyarrow.parquet as pq

        from recbuild.retrieval.tree_io import NODE_FEATURE, SERVING_TREE, read_serving_tree

        tree_dir = Path(tree_dir)
        tree = read_serving_tree(tree_dir / SERVING_TREE)
        nodes = pq.ParquetFile(str(tree_dir / NODE_FEATURE)).read()  # read_table imports pandas
        if nodes.num_rows != len(tree.codes):
            raise InputError(f"{tree_dir}: node_feature has {nodes.num_rows} rows but serving_tree "
                             f"{len(tree.codes)} nodes; rebuild the tree")
        self.id_feature = _id_feature(item_reader.specs)
        self.node_inputs = item_reader.numpy(nodes.select(item_reader.columns))
        self.negatives = negatives
        self.depth = tree.depth
        levels = tree.levels
        self.level_start = np.searchsorted(levels, np.arange(tree.depth + 1))
        self.level_count = np.bincount(levels, minlength=tree.depth + 1)
        leaves = np.flatnonzero(tree.leaf_mask)
        leaf_keys = self.node_inputs[self.id_feature][leaves]
        order = np.argsort(leaf_keys, kind="stable")
        self.leaf_keys, self.leaves = leaf_keys[order], leaves[order]
        # ancestors[:, l - 1] = node index of the leaf's ancestor on level l (l = depth: the leaf)
        parent = tree.parent_index()
        self.ancestors = np.empty((len(self.leaves), tree.depth), dtype=np.int64)
        current = self.leaves
        for level in range(tree.depth, 0, -1):
            self.ancestors[:, level - 1] = current
            current = parent[current]

    def leaf_rows(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(batch rows whose item is a leaf, their position in self.leaves)."""
        pos = np.minimum(np.searchsorted(self.leaf_keys, item_ids), len(self.leaf_keys) - 1)
        found = self.leaf_keys[pos] == item_ids
        return np.flatnonzero(found), pos[found]

    def expand(self, item_ids: np.ndarray, rng: np.random.Generator):
        """(batch row, node index, label) of every sample for a batch of clicked item ids."""
        rows, leaf_pos = self.leaf_rows(item_ids)
        out_rows, out_nodes, out_labels = [], [], []
        for level in range(1, self.depth + 1):
            positive = self.ancestors[leaf_pos, level - 1]
            out_rows.append(rows)
            out_nodes.append(positive)
            out_labels.append(np.ones(len(rows), dtype=np.float32))
            start, count = int(self.level_start[level]), int(self.level_count[level])
            m = min(self.negatives, count - 1)
            if m <= 0:
                continue
            # uniform over the level's other nodes: draw from count - 1 slots, skip the positive
            draw = rng.integers(0, count - 1, size=(len(rows), m))
            rank = (positive - start)[:, None]
            out_rows.append(np.repeat(rows, m))
            out_nodes.append((start + draw + (draw >= rank)).ravel())
            out_labels.append(np.zeros(len(rows) * m, dtype=np.float32))
        return np.concatenate(out_rows), np.concatenate(out_nodes), np.concatenate(out_labels)

    def samples(self, user_arrays: dict[str, np.ndarray], item_ids: np.ndarray, rng) -> tuple[dict, np.ndarray]:
        rows, nodes, labels = self.expand(item_ids, rng)
        inputs = {name: value[rows] for name, value in user_arrays.items()}
        inputs.update({name: value[nodes] for name, value in self.node_inputs.items()})
        return inputs, labels


def _id_feature(item_specs) -> str:
    """The item feature holding the node id: `item_id` if declared, else the only item id feature."""
    ids = [s.name for s in item_specs if s.type == "id"]
    if "item_id" in ids:
        return "item_id"
    if len(ids) == 1:
        return ids[0]
    raise BuildError(f"tdm: cannot tell which item feature is the node id among {ids or 'none'}; "
                     "name it item_id")
