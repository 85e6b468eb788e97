"""The blind test: "spot the quantized image" in the browser, votes in the results database, and
statistics that say when nobody can tell.

- :mod:`diffquant.arena.stats` — Wilson intervals, the exact binomial test, votes needed (pure Python)
- :mod:`diffquant.arena.pool` — which images may be shown together (the reference rule of ``quality``)
- :mod:`diffquant.arena.store` — sessions, rounds and votes in the ``arena_*`` tables (WAL)
- :mod:`diffquant.arena.service` — dealing rounds, taking votes, refusing hostile requests, rate limits
- :mod:`diffquant.arena.summary` — per-recipe detection from the stored votes; tables, CSV, JSON
- :mod:`diffquant.arena.api` (FastAPI) and :mod:`diffquant.arena.ui` (Gradio) — the server

Importing this package is cheap; FastAPI and Gradio load only in ``api`` and ``ui``.
"""
