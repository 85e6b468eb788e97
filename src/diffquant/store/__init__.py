"""The results database (SQLite) and its exports. No torch import anywhere in this package.

Stable API, read by the quality and report modules::

    with ResultsDB(path) as db:          # opens, creates or migrates
        for run in db.runs(model=None, status="ok"):   # list[RunRow]
            for image in db.images(run.id):            # list[ImageRow]
                ...
        db.connection                    # sqlite3.Connection, for modules with their own tables
"""

from diffquant.atomic import write_text_atomic as write_atomic  # the name this package has always exported
from diffquant.store.db import ImageRow, MetricValue, ResultsDB, RunRow
from diffquant.store.export import FORMATS, render, to_csv, to_json, to_markdown
from diffquant.store.schema import SCHEMA_VERSION
from diffquant.store.summary import COLUMNS, summary_rows

__all__ = ["COLUMNS", "FORMATS", "SCHEMA_VERSION", "ImageRow", "MetricValue", "ResultsDB", "RunRow", "render",
           "summary_rows", "to_csv", "to_json", "to_markdown", "write_atomic"]
