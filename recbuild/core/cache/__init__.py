"""The shared artifact cache: entries keyed by an artifact's key on any fsspec store, verified on the
way in and out, and the push / pull / status / gc operations on a workdir."""
