"""One transformer-stage variant of the zoo:shapes training, evaluated per attribute.

    python scripts/shapes_ablation.py NAME --steps 2000 --threads 1 --set flow_edge_weight=8.0

Trains only the transformer (and CLIP) with ``TrainConfig`` changed by ``--set`` (a field name and a
value of that field's type; booleans are ``true``/``false``), on the shipped VAE and scorer, into
``out/shapes-ablation/NAME``; then generates the seen and held-out evaluation prompts (seeds 0 and
1) and prints, and appends to ``--json``, the accuracy of every attribute and the fraction of
images with all attributes right. How docs/shapes.md's "what was tried" rows were measured (two
variants at a time, one thread each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from diffquant.atomic import write_text_atomic
from diffquant.zoo.shapes import train
from diffquant.zoo.shapes.model import WEIGHTS_DIR

_BOOLS = {"true": True, "false": False}


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["name=value", ...]`` -> TrainConfig overrides, each value converted to its field's type."""
    fields = {f.name: f for f in dataclasses.fields(train.TrainConfig)}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in fields or name in ("transformer", "vae", "eval_seeds"):
            valid = ", ".join(n for n in fields if n not in ("transformer", "vae", "eval_seeds"))
            raise SystemExit(f"--set {item!r}: expected NAME=VALUE with NAME one of: {valid}")
        kind = type(getattr(train.TrainConfig(), name))
        if kind is bool:
            if text.lower() not in _BOOLS:
                raise SystemExit(f"--set {item!r}: {name} is true or false, not {text!r}")
            out[name] = _BOOLS[text.lower()]
        else:
            try:
                out[name] = kind(text)
            except ValueError:
                raise SystemExit(f"--set {item!r}: {name} takes {kind.__name__} values, not {text!r}") from None
    return out


def evaluate(folder: Path) -> dict[str, Any]:
    import numpy as np
    from diffusers import FluxPipeline

    from diffquant.zoo.shapes.scorer import (
        EVAL_PROMPTS_HELDOUT,
        EVAL_PROMPTS_SEEN,
        attribute_accuracy,
        generate,
        score_images,
    )

    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    result: dict[str, Any] = {}
    for split, prompts in (("seen", EVAL_PROMPTS_SEEN), ("heldout", EVAL_PROMPTS_HELDOUT)):
        images, used = generate(pipe, prompts, (0, 1))
        result[split] = {**attribute_accuracy(images, used),
                         "all": float(np.mean([s == 1.0 for s in score_images(images, used)]))}
    return result


ATTRIBUTES = ("shape", "colour", "background", "position", "size")


def render(data: dict[str, Any]) -> str:
    """docs/shapes.md's table of the variants (``docs/data/shapes_ablations.json``)."""
    lines = [("| variant | steps | threads | seen: shape | colour | background | position | size | all right "
             "| held-out: shape | all right |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        seen, held = row["seen"], row["heldout"]
        label = row.get("label") or (", ".join(f"{k}={v}" for k, v in row["set"].items()) or "the defaults")
        lines.append(f"| {label} | {row['steps']} | {row['threads']} | "
                     + " | ".join(f"{seen[a]:.2f}" for a in ATTRIBUTES)
                     + f" | {seen['all']:.2f} | {held['shape']:.2f} | {held['all']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out", type=Path, default=Path("out") / "shapes-ablation")
    parser.add_argument("--json", type=Path, help="append the result to this file's rows (docs/data/shapes_ablations.json)")
    args = parser.parse_args(argv)
    overrides = parse_set(args.set)
    out = args.out / args.name
    (out / "pipeline").mkdir(parents=True, exist_ok=True)
    if not (out / "pipeline" / "vae").exists():
        shutil.copytree(WEIGHTS_DIR / "pipeline" / "vae", out / "pipeline" / "vae")
    shutil.copy(WEIGHTS_DIR / "scorer.safetensors", out / "scorer.safetensors")
    cfg = dataclasses.replace(train.TrainConfig(), steps=args.steps, threads=args.threads, **overrides)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    started = time.perf_counter()
    train.run(cfg, out, {"transformer"}, log)
    record = {"name": args.name, "steps": args.steps, "threads": args.threads, "set": overrides,
              "train_seconds": round(time.perf_counter() - started, 1), **evaluate(out / "pipeline")}
    print(json.dumps(record), flush=True)
    if args.json:
        data = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}
        data["rows"] = [*data["rows"], record]
        write_text_atomic(args.json, json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
