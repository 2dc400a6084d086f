"""The state of one workdir: content digests and the stat cache, source state, MANIFEST.json, keys and
staleness, atomic publish and ownership, the one-writer lock, the metrics history."""
