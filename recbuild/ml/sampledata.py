"""Deterministic synthetic Taobao-shaped tables (items, users, interactions).

The tables share one *world*: the item and user universes, the category structure and every user's
tastes are drawn from a generator seeded by ``(seed, n_items, n_users, n_categories)`` only, so the
items table, the users table and the train/eval interaction splits of the same world agree on ids and
features. Each interaction split is a different draw from that world (its own seeded stream).

What a model can learn from the data (and a popularity baseline cannot):
  * items belong to categories; items of a category share brand and customer ranges and a price level;
  * item popularity is Zipf-skewed inside each category (and so overall);
  * a user clicks mostly in four preferred categories: two follow their ``cms_group_id`` segment
    (itself derived from gender and age, as in the real Taobao data), two are personal (learnable
    only through ``user_id``);
  * label-0 rows are exposures drawn from global popularity regardless of taste, so a ranking
    model can separate them from clicks.

Everything is numpy-vectorised: 200k interaction rows take a few tens of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

TABLES = ("items", "users", "interactions")
SPLITS = ("train", "eval")

ITEM_COLUMNS = ("item_id", "cate_id", "campaign_id", "customer", "brand", "price")
USER_COLUMNS = ("user_id", "cms_segid", "cms_group_id", "final_gender_code", "age_level",
                "pvalue_level", "shopping_level", "occupation", "new_user_class_level")
INTERACTION_COLUMNS = USER_COLUMNS + ITEM_COLUMNS + ("label",)

# Fixed stream tags: mixing them into the seed gives independent, reproducible streams.
_WORLD_STREAM = 0x574F524C44  # "WORLD"
_SPLIT_STREAM = {"train": 0x545241494E, "eval": 0x4556414C}  # "TRAIN", "EVAL"

ITEM_ZIPF_EXPONENT = 0.9  # popularity skew of items inside a category
USER_ACTIVITY_EXPONENT = 0.5  # some users are more active than others
TASTE_SHARE = 0.85  # share of clicks that follow the user's preferred categories
N_SEGMENTS = 13  # cms_group_id values (gender x age buckets in Taobao)
BRANDS_PER_CATEGORY = 40
CUSTOMERS_PER_CATEGORY = 60


@dataclass(frozen=True)
class World:
    """The item and user universes shared by every table of one (seed, sizes)."""

    items: dict[str, np.ndarray]  # ITEM_COLUMNS -> [n_items]
    users: dict[str, np.ndarray]  # USER_COLUMNS -> [n_users]
    item_category: np.ndarray  # [n_items] category index 0..n_categories-1
    user_tastes: np.ndarray  # [n_users, 4] preferred category indexes
    taste_weights: np.ndarray  # [4] probability of each preferred slot
    category_cumulative: np.ndarray  # [n_items] item order by category, segment c spans (c, c+1]
    items_by_category: np.ndarray  # [n_items] item row indexes sorted by category
    item_cumulative: np.ndarray  # [n_items] global popularity CDF (over item rows)
    category_cdf: np.ndarray  # [n_categories] global category popularity CDF
    user_cdf: np.ndarray  # [n_users] user activity CDF


def _distinct_ids(rng: np.random.Generator, count: int, low: int, span_factor: int) -> np.ndarray:
    """`count` distinct int64 ids from [low, low + span_factor*count), sorted (ids look real, not 0..n)."""
    ids = rng.choice(span_factor * count, size=count, replace=False).astype(np.int64) + low
    ids.sort()
    return ids


def _sample_cdf(cdf: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling; cdf is increasing and ends at its total."""
    return np.minimum(np.searchsorted(cdf, uniforms * cdf[-1], side="right"), len(cdf) - 1)


@lru_cache(maxsize=8)
def make_world(seed: int, n_items: int = 10000, n_users: int = 5000, n_categories: int = 50) -> World:
    if n_categories < 1 or n_items < n_categories or n_users < 1:
        raise ValueError(f"need n_items >= n_categories >= 1 and n_users >= 1, got n_items={n_items}, "
                         f"n_categories={n_categories}, n_users={n_users}")
    rng = np.random.default_rng([_WORLD_STREAM, seed, n_items, n_users, n_categories])

    # Categories: Zipf-ish sizes; every category holds at least one item.
    cate_ids = _distinct_ids(rng, n_categories, 1, 200)
    size_weights = 1.0 / np.arange(1, n_categories + 1) ** 0.7
    rng.shuffle(size_weights)
    item_category = np.concatenate([
        np.arange(n_categories),
        rng.choice(n_categories, size=n_items - n_categories, p=size_weights / size_weights.sum()),
    ])
    rng.shuffle(item_category)

    # Items of a category share brand/customer ranges and a price level.
    brand_base = rng.permutation(n_categories).astype(np.int64) * BRANDS_PER_CATEGORY + 1
    customer_base = rng.permutation(n_categories).astype(np.int64) * CUSTOMERS_PER_CATEGORY + 1
    price_level = rng.uniform(1.5, 6.5, size=n_categories)
    brand = brand_base[item_category] + rng.integers(0, BRANDS_PER_CATEGORY, size=n_items)
    customer = customer_base[item_category] + rng.integers(0, CUSTOMERS_PER_CATEGORY, size=n_items)
    campaign_id = customer * 16 + rng.integers(0, 16, size=n_items)
    price = np.round(np.exp(price_level[item_category] + rng.normal(0.0, 0.5, size=n_items)), 2)
    items = {
        "item_id": _distinct_ids(rng, n_items, 1, 80),
        "cate_id": cate_ids[item_category],
        "campaign_id": campaign_id.astype(np.int64),
        "customer": customer.astype(np.int64),
        "brand": brand.astype(np.int64),
        "price": price.astype(np.float64),
    }

    # Item popularity: Zipf over a random global rank, so each category has its own head and tail.
    popularity = 1.0 / (rng.permutation(n_items) + 1.0) ** ITEM_ZIPF_EXPONENT
    items_by_category = np.lexsort((np.arange(n_items), item_category))
    pop_sorted = popularity[items_by_category]
    cat_sorted = item_category[items_by_category]
    category_mass = np.bincount(item_category, weights=popularity, minlength=n_categories)
    # Within-category CDF shifted by the category index: sampling "c + u" lands in category c.
    within = np.cumsum(pop_sorted)
    before = np.concatenate([[0.0], np.cumsum(category_mass)[:-1]])
    category_cumulative = cat_sorted + (within - before[cat_sorted]) / category_mass[cat_sorted]

    # Users: demographics; cms_group_id is a gender x age segment as in Taobao.
    gender = rng.integers(1, 3, size=n_users)
    age_level = rng.choice(7, size=n_users, p=[0.02, 0.12, 0.28, 0.28, 0.16, 0.1, 0.04])
    cms_group_id = ((gender - 1) * 6 + np.minimum(age_level, 6)) % N_SEGMENTS
    users = {
        "user_id": _distinct_ids(rng, n_users, 1, 200),
        "cms_segid": np.where(rng.random(n_users) < 0.7, 0, rng.integers(1, 98, size=n_users)),
        "cms_group_id": cms_group_id,
        "final_gender_code": gender,
        "age_level": age_level,
        "pvalue_level": rng.integers(1, 4, size=n_users),
        "shopping_level": rng.choice([1, 2, 3], size=n_users, p=[0.05, 0.15, 0.8]),
        "occupation": (rng.random(n_users) < 0.06).astype(np.int64),
        "new_user_class_level": rng.integers(1, 5, size=n_users),
    }
    users = {name: values.astype(np.int64) for name, values in users.items()}

    # Tastes: two categories from the segment, two personal ones.
    segment_tastes = rng.integers(0, n_categories, size=(N_SEGMENTS, 2))
    personal_tastes = rng.integers(0, n_categories, size=(n_users, 2))
    user_tastes = np.concatenate([segment_tastes[cms_group_id], personal_tastes], axis=1)

    return World(
        items=items,
        users=users,
        item_category=item_category,
        user_tastes=user_tastes,
        taste_weights=np.array([0.3, 0.2, 0.3, 0.2]),
        category_cumulative=category_cumulative,
        items_by_category=items_by_category,
        item_cumulative=np.cumsum(popularity),
        category_cdf=np.cumsum(category_mass),
        user_cdf=np.cumsum(1.0 / (rng.permutation(n_users) + 1.0) ** USER_ACTIVITY_EXPONENT),
    )


def interactions(world: World, rows: int, seed: int, split: str = "train",
                 positive_rate: float = 0.5) -> dict[str, np.ndarray]:
    """`rows` (user, item, label) rows of one split; columns in INTERACTION_COLUMNS order."""
    if split not in _SPLIT_STREAM:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n_items = len(world.item_category)
    rng = np.random.default_rng([_SPLIT_STREAM[split], seed, rows, n_items, len(world.user_cdf)])
    user_rows = _sample_cdf(world.user_cdf, rng.random(rows))
    label = (rng.random(rows) < positive_rate).astype(np.int64)

    # Clicks: a preferred category most of the time, else any category by popularity; then an item
    # of that category by its popularity.
    slot = _sample_cdf(np.cumsum(world.taste_weights), rng.random(rows))
    category = world.user_tastes[user_rows, slot]
    off_taste = rng.random(rows) >= TASTE_SHARE
    category = np.where(off_taste, _sample_cdf(world.category_cdf, rng.random(rows)), category)
    offsets = np.searchsorted(world.category_cumulative, category + rng.random(rows), side="right")
    clicked = world.items_by_category[np.minimum(offsets, n_items - 1)]
    # Exposures (label 0): shown by global popularity, whatever the user likes.
    exposed = _sample_cdf(world.item_cumulative, rng.random(rows))
    item_rows = np.where(label == 1, clicked, exposed)

    table = {name: world.users[name][user_rows] for name in USER_COLUMNS}
    table.update({name: world.items[name][item_rows] for name in ITEM_COLUMNS})
    table["label"] = label
    return table


def generate(table: str, *, seed: int, rows: int | None = None, split: str = "train",
             n_items: int = 10000, n_users: int = 5000, n_categories: int = 50,
             positive_rate: float = 0.5) -> dict[str, np.ndarray]:
    """Columns of one sample table as numpy arrays (int64 / float64)."""
    world = make_world(seed, n_items, n_users, n_categories)
    if table == "interactions":
        return interactions(world, 10000 if rows is None else rows, seed, split, positive_rate)
    if table == "items":
        source, universe = world.items, n_items
    elif table == "users":
        source, universe = world.users, n_users
    else:
        raise ValueError(f"table must be one of {TABLES}, got {table!r}")
    count = universe if rows is None else rows
    if count > universe:
        raise ValueError(f"rows={count} exceeds the {table} universe of {universe}; raise "
                         f"n_{table} or lower rows")
    return {name: values[:count] for name, values in source.items()}


def to_arrow(columns: dict[str, np.ndarray]):
    import pyarrow as pa

    return pa.table({name: pa.array(values) for name, values in columns.items()})


def write_parquet(columns: dict[str, np.ndarray], path, row_group_size: int = 65536) -> None:
    """Write with the fixed options recbuild uses everywhere (byte-identical for identical data)."""
    import pyarrow.parquet as pq

    table = to_arrow(columns)
    with pq.ParquetWriter(str(path), table.schema, use_dictionary=False, compression="snappy",
                          write_statistics=True) as writer:
        writer.write_table(table, row_group_size=row_group_size)
