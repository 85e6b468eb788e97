"""Shared test set-up: everything offline, zoo models cached in the repo's .dq-cache folder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# A shell's background job (`cmd &`) starts with SIGINT ignored, and an ignored signal stays ignored
# in every child: the interrupt tests' sweeps would never see their Ctrl-C. A handler is reset by exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Offline, always: nothing may reach a model hub at test time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Built zoo models are reused across test runs (they are rebuilt when their builder version changes).
os.environ.setdefault("DIFFQUANT_CACHE", str(REPO / ".dq-cache"))
