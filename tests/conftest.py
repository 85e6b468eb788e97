"""Shared test set-up: everything offline, zoo models cached in the repo's .dq-cache folder."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Offline, always: nothing may reach a model hub at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Built zoo models are reused across test runs (they are rebuilt when their builder version changes).
os.environ.setdefault("DIFFQUANT_CACHE", str(REPO / ".dq-cache"))
