"""`recbuild report`: one self-contained HTML page of plots about a recipe's workdir.

``collect`` reads the workdir into plain data (recbuild.report.model), ``figures`` turns each item
into a plotly figure, ``page`` lays them out in one HTML file with plotly.js inlined.
"""

from __future__ import annotations

DEFAULT_NAME = "report.html"  # written into the recipe's workdir unless -o says otherwise
