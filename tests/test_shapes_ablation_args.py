"""scripts/shapes_ablation.py's ``--set NAME=VALUE``: each value is converted to its TrainConfig
field's type; a boolean is only ``true``/``false`` (never any non-empty string), and an unknown
name or a value of the wrong type is refused with the valid choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scriptload import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "shapes_ablation.py"


def _script() -> Any:
    return load_script(SCRIPT)


def test_values_take_their_fields_types() -> None:
    parse = _script().parse_set
    assert parse(["flow_edge_weight=8", "compile=false", "steps=100", "autocast_bf16=TRUE"]) == {
        "flow_edge_weight": 8.0, "compile": False, "steps": 100, "autocast_bf16": True}


@pytest.mark.parametrize(("item", "message"), [
    ("compile=no", "compile is true or false, not 'no'"),
    ("steps=many", "steps takes int values, not 'many'"),
    ("stepz=3", "NAME one of: seed, threads"),
    ("steps", "expected NAME=VALUE"),
    ("transformer={}", "expected NAME=VALUE"),
])
def test_bad_settings_are_refused_with_the_choices(item: str, message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        _script().parse_set([item])
