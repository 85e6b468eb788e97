"""``diffquant recipes``: every recipe token, what it does, and whether it runs on this machine."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "recipes", help="list every recipe, what it does, and whether it can run here (and why not)",
        description="List quantization recipes (one per backend type), memory and compile modifiers, and "
                    "the zoo models. Recipes combine with '+', e.g. bnb-nf4+offload-group-leaf+compile.")
    parser.add_argument("--device", default=None, help="judge for this device (cpu|cuda; default: this machine's)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--check", metavar="RECIPE", default=None,
                        help="parse one recipe string or .toml file and explain it (canonical form, hash, TOML)")
    parser.set_defaults(func=run)
    return parser


def recipe_rows(device: str) -> list[dict[str, Any]]:
    """One row per token: name, kind, description, bits, runs_here, reason, deprecated (upstream's
    notice and removal plan, or None)."""
    from diffquant.backends import notes_for, why_not_here
    from diffquant.recipes import catalog as cat
    from diffquant.recipes import parse_recipe

    rows: list[dict[str, Any]] = []

    def add(token: str, kind: str, help_: str, bits: float | None, probe: str | None = None,
            deprecated: str = "") -> None:
        recipe = parse_recipe(probe or token)
        reason = why_not_here(recipe, device)
        rows.append({"recipe": token, "kind": kind, "what": help_, "bits_per_weight": bits,
                     "runs_here": reason is None, "reason": reason or "; ".join(notes_for(recipe, device)),
                     "deprecated": deprecated or None})

    add("bf16", "reference", "no quantization, bfloat16 weights (fp16 / fp32 also accepted)", 16.0)
    for backend in cat.BACKENDS.values():
        for qtype in backend.types.values():
            add(backend.token_for(qtype.name), backend.title, qtype.help, qtype.bits, deprecated=backend.deprecated)
    add("offload-model", "memory", "move whole components to the GPU only while they run", None,
        "bf16+offload-model")
    add("offload-seq", "memory", "stream every layer's weights to the GPU per call (smallest, slowest)", None,
        "bf16+offload-seq")
    add("offload-group-leaf", "memory", "group offload per leaf module; options: stream, disk", None,
        "bf16+offload-group-leaf")
    add("offload-group-leaf(stream)", "memory", "overlap transfers with compute on a CUDA stream", None,
        "bf16+offload-group-leaf(stream)")
    add("offload-group-leaf(disk)", "memory", "offloaded weights kept in files instead of RAM", None,
        "bf16+offload-group-leaf(disk)")
    add("offload-group-block(blocks=N)", "memory", "group offload N transformer blocks at a time", None,
        "bf16+offload-group-block(blocks=2)")
    add("vae-tiling", "memory", "decode the image in tiles (large sizes)", None, "bf16+vae-tiling")
    add("vae-slicing", "memory", "decode a batch one image at a time", None, "bf16+vae-slicing")
    add("compile(mode=M,fullgraph)", "compile", "torch.compile the denoiser; modes: " + ", ".join(cat.COMPILE_MODES),
        None, "bf16+compile")
    add("compile(regional)", "compile", "compile only the denoiser's repeated blocks (diffusers' "
        "compile_repeated_blocks), each block class compiled once", None, "bf16+compile(regional)")
    return rows


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped or captured output: don't squeeze the table to 80 columns
    if args.check:
        return _explain(args.check, console)
    from diffquant.pipeline import default_device

    device = args.device or default_device()
    rows = recipe_rows(device)
    if args.format == "json":
        print(json.dumps({"device": device, "recipes": rows}, indent=2))
        return 0
    table = Table(title=f"diffquant recipes on this machine ({device})", show_lines=False)
    for column in ("recipe", "backend / kind", "what it does", "bits/weight", f"runs on {device}?", "why not / notes"):
        table.add_column(column, overflow="fold")
    for row in rows:
        notes = row["reason"] or ""
        if row["deprecated"]:
            notes = f"[yellow]DEPRECATED upstream[/]: {row['deprecated']}" + (f"; {notes}" if notes else "")
        table.add_row(row["recipe"], row["kind"], row["what"],
                      "" if row["bits_per_weight"] is None else f"{row['bits_per_weight']:g}",
                      "[green]yes[/]" if row["runs_here"] else "[red]no[/]", notes)
    console.print(table)
    console.print("Combine with '+': e.g. [bold]bnb-nf4+offload-group-leaf+compile[/]. Per component: "
                  "[bold]bnb-nf4@transformer+quanto-int8@text_encoder_2[/]. Options in parentheses: "
                  "[bold]bnb-nf4(double_quant,skip=proj_out)[/]. Default components: the denoiser and the "
                  "large text encoder (GGUF and fp8-layerwise: the denoiser only).")
    _print_zoo(console)
    return 0


def _print_zoo(console: Any) -> None:
    from rich.table import Table

    from diffquant.zoo import list_entries

    table = Table(title="Offline model zoo (use as zoo:NAME)")
    table.add_column("model")
    table.add_column("what it is", overflow="fold")
    for entry in list_entries():
        table.add_row(f"zoo:{entry.name}", entry.description)
    console.print(table)


def _explain(text: str, console: Any) -> int:
    from diffquant.recipes import load_recipe, recipe_to_toml

    recipe = load_recipe(text)
    console.print(f"canonical: [bold]{recipe.name}[/]\nhash: {recipe.hash}\n")
    console.print(recipe_to_toml(recipe), markup=False)
    return 0
