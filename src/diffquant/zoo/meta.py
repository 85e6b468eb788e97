"""A model folder's ``diffquant.json``: the defaults a model was made for, read with a clear error.

Fields (all optional): ``steps``, ``size`` ([height, width]) or ``height``/``width``,
``guidance_scale``, ``pipeline_kwargs`` (only ``MODEL_PIPELINE_KWARGS``), ``prompts`` (bench's
default prompts), and the notes ``note``, ``trained``, ``trained_by``, ``seed``. Any other key, a
wrong type or malformed JSON is a ``DiffquantError`` naming the file, the field and the fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffquant.errors import DiffquantError, unknown_choice

META_FILE = "diffquant.json"
# Pipeline arguments a model may fix because it was trained for them (true CFG, a short T5 sequence).
MODEL_PIPELINE_KWARGS = ("true_cfg_scale", "negative_prompt", "max_sequence_length")


@dataclass(frozen=True)
class ModelMeta:
    steps: int | None = None
    height: int | None = None
    width: int | None = None
    guidance_scale: float | None = None
    pipeline_kwargs: dict[str, Any] = field(default_factory=dict)
    prompts: tuple[str, ...] = ()


def _whole(v: object, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _text(v: object) -> bool:
    return isinstance(v, str)


# field -> (check, what it must be, example)
_FIELDS: dict[str, tuple[Callable[[object], bool], str, str]] = {
    "steps": (lambda v: _whole(v, 1), "a whole number >= 1", '"steps": 28'),
    "size": (lambda v: isinstance(v, list) and len(v) == 2 and all(_whole(x, 1) for x in v),
             "[height, width] in pixels", '"size": [1024, 1024]'),
    "height": (lambda v: _whole(v, 1), "a whole number of pixels", '"height": 1024'),
    "width": (lambda v: _whole(v, 1), "a whole number of pixels", '"width": 1024'),
    "guidance_scale": (_number, "a number >= 0", '"guidance_scale": 3.5'),
    "pipeline_kwargs": (lambda v: isinstance(v, dict), "an object", '"pipeline_kwargs": {"true_cfg_scale": 4.0}'),
    "prompts": (lambda v: isinstance(v, list) and bool(v) and all(_text(p) and p.strip() for p in v),
                "a non-empty list of prompts", '"prompts": ["a red circle"]'),
    "note": (_text, "a string", '"note": "..."'),
    "trained": (lambda v: isinstance(v, bool), "true or false", '"trained": true'),
    "trained_by": (_text, "a string", '"trained_by": "python scripts/train_shapes.py --out DIR"'),
    "seed": (lambda v: _whole(v, 0), "a whole number >= 0", '"seed": 0'),
}
_KWARGS: dict[str, tuple[Callable[[object], bool], str, str]] = {
    "true_cfg_scale": (_number, "a number >= 0", '"true_cfg_scale": 4.0'),
    "negative_prompt": (_text, "a string", '"negative_prompt": ""'),
    "max_sequence_length": (lambda v: _whole(v, 1), "a whole number >= 1", '"max_sequence_length": 256'),
}


def _check(path: Path, where: str, value: object, rule: tuple[Callable[[object], bool], str, str]) -> None:
    check, what, example = rule
    if value is not None and not check(value):
        raise DiffquantError(f"{path}: {where} must be {what}; got {json.dumps(value)}.",
                             hint=f"write e.g. {example}, or leave it out")


def read_model_meta(folder: Path) -> ModelMeta | None:
    """The folder's ``diffquant.json``, validated; None when there is none."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DiffquantError(f"{path} is not UTF-8 text ({exc.reason}).", hint="rewrite it as UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise DiffquantError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.",
                             hint="fix the file (e.g. {\"steps\": 28, \"size\": [1024, 1024]}), or delete it "
                                  "to use the pipeline's own defaults") from None
    if not isinstance(data, dict):
        raise DiffquantError(f"{path} must hold a JSON object; got {type(data).__name__}.",
                             hint='write e.g. {"steps": 28, "size": [1024, 1024]}')
    for key, value in data.items():
        if key not in _FIELDS:
            raise unknown_choice(f"field in {path}", key, _FIELDS, hint="remove it or fix its spelling")
        _check(path, key, value, _FIELDS[key])
    kwargs = data.get("pipeline_kwargs") or {}
    unknown = sorted(set(kwargs) - set(MODEL_PIPELINE_KWARGS))
    if unknown:
        raise DiffquantError(f"{path}: unknown pipeline_kwargs {unknown}.",
                             hint=f"valid keys: {', '.join(MODEL_PIPELINE_KWARGS)}")
    for key, value in kwargs.items():
        _check(path, f"pipeline_kwargs.{key}", value, _KWARGS[key])
    size = data.get("size") or [data.get("height"), data.get("width")]
    return ModelMeta(steps=data.get("steps"), height=size[0], width=size[1],
                     guidance_scale=data.get("guidance_scale"), pipeline_kwargs=dict(kwargs),
                     prompts=tuple(data.get("prompts") or ()))
