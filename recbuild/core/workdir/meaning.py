"""Inputs that enter an artifact key by what they mean (``Builder.meaning_fields``), remembered by
their content digest.

A builder's ``meaning_digest`` may be slow (tzrec_train_eval parses its pipeline.config in tzrec's
interpreter), while keys are computed by every ``status`` and no-op ``make``. The answer for one
content digest does not change while the builder's kind, version and key facts stay the same, so it
is remembered in ``<workdir>/.recbuild/meanings.json`` under a digest of exactly those: a no-op make
reads that file and calls nothing. Failures (None) are not remembered: the content digest is used,
and the build says what is wrong.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import xxhash

from recbuild.core.workdir.manifest import canonical_json

MEANINGS_FILE = "meanings.json"
MAX_ENTRIES = 512  # one per distinct content ever keyed; the oldest go first


class MeaningDigests:
    def __init__(self, state_dir: Path):
        self.path = state_dir / MEANINGS_FILE
        self._lock = threading.Lock()
        self._entries: dict[str, str] | None = None
        self._contents: dict[str, set[str]] = {}  # meaning -> content digests it was given for

    def contents_of(self, digest: str | None) -> set[str]:
        """The content digests this process keyed as ``digest`` (a meaning digest): the files a key
        was computed from, for the check after the step (Workspace.input_change)."""
        return self._contents.get(digest or "", set())

    def _load(self) -> dict[str, str]:
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, str)}

    def digest(self, builder_cls: Any, field: str, params: dict[str, Any], content_digest: str,
               files: tuple[Path, ...]) -> str:
        """The key's digest of the input in ``field``: by meaning when the builder gives one, else
        ``content_digest``."""
        memo = xxhash.xxh3_128_hexdigest(canonical_json({
            "kind": builder_cls.kind, "version": str(builder_cls.version), "field": field,
            "facts": builder_cls.key_facts(params), "content": content_digest}).encode())
        with self._lock:
            if self._entries is None:
                self._entries = self._load()
            known = self._entries.get(memo)
        if known is not None:
            with self._lock:
                self._contents.setdefault(known, set()).add(content_digest)
            return known
        answer = builder_cls.meaning_digest(field, params, files)
        if answer is None:
            return content_digest
        answer = f"meaning:{answer}"
        with self._lock:
            self._contents.setdefault(answer, set()).add(content_digest)
            entries = self._load()  # another recbuild may have added its own since
            entries.pop(memo, None)
            entries[memo] = answer
            while len(entries) > MAX_ENTRIES:
                entries.pop(next(iter(entries)))
            self._entries = entries
            self._save(entries)
        return answer

    def _save(self, entries: dict[str, str]) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(entries, indent=0), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:  # only a memo: a read-only workdir asks again next time
            try:
                tmp.unlink()
            except OSError:
                pass
