"""Importing diffquant (and parsing recipes, and --help) must not import torch, any backend, or
initialise CUDA: the CLI and reports stay fast and GPU-free until a model is loaded."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "bitsandbytes", "torchao", "optimum", "gguf")


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(','.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(out.strip().splitlines()[-1].split(","))


def test_import_diffquant_is_light() -> None:
    loaded = _imported_after("import diffquant\nfrom diffquant.recipes import parse_recipe\n"
                             "parse_recipe('bnb-nf4+offload-group-leaf+compile')")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_cli_help_is_light() -> None:
    loaded = _imported_after("from diffquant.cli import build_parser\nbuild_parser().format_help()")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_cli_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "diffquant.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for command in ("recipes", "generate", "quantize", "bench", "results", "matrix", "score", "report",
                    "grid", "export"):
        assert command in out
