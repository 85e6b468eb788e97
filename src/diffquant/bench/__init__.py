"""Benchmarks: sweeps of recipes over one model, each run in its own worker process, measured
(memory per phase, latencies, weight bytes, environment) and recorded in the results database.

Heavy imports (torch, diffusers) happen only inside the worker and in functions that need them.
"""

from diffquant.bench.jobs import PlannedRun
from diffquant.bench.spec import BenchSettings, RunSpec, run_key, sweep_id
from diffquant.bench.sweep import (
           SEED_PROMPTS,
           SweepOptions,
           SweepReport,
           resolve_settings,
           run_sweep,
)

__all__ = ["SEED_PROMPTS", "BenchSettings", "PlannedRun", "RunSpec", "SweepOptions", "SweepReport",
           "resolve_settings", "run_key", "run_sweep", "sweep_id"]
