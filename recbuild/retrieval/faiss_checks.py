"""What faiss's k-means can train, checked before any reading or training, in recbuild's words.

faiss reports these itself, but as a C++ assertion (``Number of training points (50) should be at
least as large as number of clusters (256)``) or as warnings it writes straight to the process's
stderr (``WARNING clustering 10000 points to 4096 centroids: please provide at least 159744 training
points``). Here a hard failure is an InputError naming the param to change, and faiss's advice of
39 training points per centroid becomes a warning line the builder passes on; ``quiet_clustering``
then stops faiss from printing its own copy (that setting only gates the message, not the result).
"""

from __future__ import annotations

import math

from recbuild.errors import InputError

# faiss's ClusteringParameters.min_points_per_centroid: below it, faiss warns that k-means is starved
MIN_POINTS_PER_CENTROID = 39


def check_training(spec, count: int) -> list[str]:
    """Raise InputError when ``spec`` cannot be trained on a table of ``count`` rows; return the
    advice lines (fewer than 39 training rows per centroid) for the user."""
    if not spec.is_ivf or count == 0:  # (an empty table has its own error, from the build)
        return []
    train_size = spec.resolved_train_size(count)
    own_size = spec.train_size is not None and spec.train_size < count
    sample = f"train_size={train_size}" if own_size else f"the table's {count} rows"
    more = "raise train_size" if own_size else "use more rows"
    if spec.nlist > count:
        raise InputError(f"nlist={spec.nlist} is larger than the table ({count} rows): k-means needs at "
                         f"least one row per list; set nlist <= {count} (about sqrt(rows) = "
                         f"{max(1, round(math.sqrt(count)))} is usual, and leaving nlist unset picks that)")
    if train_size < spec.nlist:
        raise InputError(f"train_size={train_size} is smaller than nlist={spec.nlist}: k-means needs at least "
                         f"one training row per list; raise train_size to at least {spec.nlist}, or lower nlist")
    codebook = 1 << spec.nbits
    if spec.index_type == "IVFPQ" and train_size < codebook:
        fits = int(math.floor(math.log2(train_size))) if train_size >= 2 else 0
        fix = f"lower nbits to at most {fits} (2**{fits} = {1 << fits})" if fits >= 1 else more
        raise InputError(f"IVFPQ with nbits={spec.nbits} trains 2**{spec.nbits} = {codebook} centroids per "
                         f"sub-quantizer but has only {sample} to train on; {fix}, {more}, or use "
                         "index_type IVFFlat or Flat")
    advice = []
    if train_size < MIN_POINTS_PER_CENTROID * spec.nlist:
        fits = max(1, train_size // MIN_POINTS_PER_CENTROID)
        advice.append(f"nlist={spec.nlist} leaves {train_size / spec.nlist:.1f} training rows per list "
                      f"({sample}); faiss advises at least {MIN_POINTS_PER_CENTROID}, so its lists are "
                      f"poorly placed: set nlist <= {fits} (or leave it unset), or {more}")
    if spec.index_type == "IVFPQ" and train_size < MIN_POINTS_PER_CENTROID * codebook:
        fits = int(math.floor(math.log2(max(train_size // MIN_POINTS_PER_CENTROID, 1))))
        fix = f"lower nbits to {fits}" if fits >= 1 else more
        advice.append(f"nbits={spec.nbits} trains {codebook} codebook centroids from {sample} "
                      f"({train_size / codebook:.1f} per centroid); faiss advises at least "
                      f"{MIN_POINTS_PER_CENTROID}, so its codes are coarse: {fix}, or {more}")
    return advice


def quiet_clustering(index) -> None:
    """Stop faiss writing its own k-means warnings to stderr (check_training said it in our words).
    min_points_per_centroid only decides whether faiss prints that warning; the training is the same."""
    for owner in (index, getattr(index, "pq", None)):
        cp = getattr(owner, "cp", None)
        if cp is not None:
            cp.min_points_per_centroid = 0
