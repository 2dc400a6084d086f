"""The input plan of a prediction: what the validation pre-pass learnt about the input files, read
by the source, the overlap loop and the writer (its own module so none of them imports another's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa


@dataclass
class InputPlan:
    """What the pre-pass learnt: per-file row counts, output schema, rows to drop."""

    files: list[str]
    file_rows: list[int]
    read_columns: list[str]  # id + reserved + feature columns, in that order, each once
    passthrough_schema: pa.Schema  # id + reserved columns as found in the input
    drop_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))  # sorted, global

    @property
    def total_rows(self) -> int:
        return sum(self.file_rows)

    def locate(self, global_row: int) -> str:
        """'row R of FILE' for a global row number (messages only)."""
        starts = np.cumsum([0] + self.file_rows)
        i = int(np.searchsorted(starts, global_row, side="right")) - 1
        return f"row {global_row - int(starts[i])} of {Path(self.files[i]).name}"
