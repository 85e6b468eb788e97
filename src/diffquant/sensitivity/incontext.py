"""In-context (leave-one-out) sensitivity: each group's error measured inside the uniform recipe.

A group measured alone (the rest at the reference precision) answers "how much does this group
hurt by itself?". A mix asks something else: "how much does keeping this group precise help,
when everything else is quantized?". Where a recipe's error is collective — GGUF Q2_K on
zoo:shapes, whose single groups measured alone account for a small part of its end-image error —
the two rankings differ, and the first picks the wrong groups for the mix.

Here every group of every measured component is quantized (the backend's own modules, made once),
and then each group alone is promoted — one type up where the backend has one, and back to the
reference precision — on the same captured calls. A group's ``rel_error`` is then
``err(uniform) − err(uniform, group at reference)``: the error its promotion removes, on the
denoiser output's scale (it can be negative: a promotion can undo a lucky cancellation). Its
``rel_error_upgrade`` is ``err(uniform, group one type up) − err(uniform, group at reference)``,
the error still left at the upgrade type. With those, the mix's ladder (recipe type → one type up
→ reference) reads the same as for the "alone" sweep. The cost is the same too: one pass over the
captured calls per group and rung.
"""

from __future__ import annotations

from typing import Any

from diffquant.sensitivity.capture import Captured, first_step_calls, recondition
from diffquant.sensitivity.measure import (
    GroupResult,
    _bytes,
    _error_of,
    _Images,
    _label,
    _Part,
    _psnr_of,
    _quantized,
    _rel_error,
)


def _calls(parts: tuple[_Part, ...], main: _Part, pipe: Any, captured: Captured) -> list[Any]:
    """The captured calls as the current text encoders condition them (the captured ones when no
    text encoder is measured: the reference conditioning)."""
    if len(parts) == 1:
        return captured.calls
    return recondition(captured, first_step_calls(pipe, main.model, captured))


def sweep_in_context(parts: tuple[_Part, ...], main: _Part, pipe: Any, captured: Captured,
                     byte_tables: dict[str, dict[str, tuple[int, int, int]]], progress: Any = None
                     ) -> tuple[list[GroupResult], dict[str, float], float, dict[str, dict[str, Any]]]:
    """Every group promoted inside the uniform recipe, one at a time.

    Returns the groups (unranked), each component's own uniform error (that component alone
    quantized: the calibration's denominator, as in the "alone" sweep), the uniform recipe's
    error, and the quantized copies by component (the end-image measurements reuse them)."""
    real = {p.component: _quantized(p.backend, p.spec, p.model, tuple(p.names)) for p in parts}
    # Every pass runs every quantized layer: each backend may offer a copy that is cheaper to rerun.
    quantized = {p.component: {n: p.backend.evaluation_copy(layer) for n, layer in real[p.component].items()}
                 for p in parts}
    # The upgrade copies are made from the reference modules, before the quantized ones go in.
    upgraded = {p.component: _quantized(p.backend, p.up_spec, p.model, tuple(p.names)) if p.up_spec else {}
                for p in parts}
    errors = {p.component: _error_of(p, main, pipe, captured, quantized[p.component]) for p in parts}
    total = sum(len(p.groups) for p in parts)
    done = 0
    results: list[GroupResult] = []
    originals: list[tuple[_Part, dict[str, Any]]] = []
    try:
        for part in parts:
            originals.append((part, part.swapper.swap(quantized[part.component])))
        reference = {part.component: old for part, old in originals}
        calls = _calls(parts, main, pipe, captured)  # the denoiser's groups: conditioning of the quantized encoders
        uniform = _rel_error(main.model, calls, captured.outputs)
        for part in parts:
            table = byte_tables.setdefault(part.component, {})
            for group in part.groups:
                if progress:
                    progress(done, total, _label(part, main, group.name))
                done += 1

                def error_with(layers: dict[str, Any], part: _Part = part) -> float:
                    old = part.swapper.swap(layers)
                    try:
                        got = calls if part is main else _calls(parts, main, pipe, captured)
                        return _rel_error(main.model, got, captured.outputs)
                    finally:
                        part.swapper.swap(old)

                refs = {n: reference[part.component][n] for n in group.modules}
                at_reference = error_with(refs)
                ups = {n: upgraded[part.component][n] for n in group.modules} if part.up_spec else refs
                at_upgrade = (error_with({n: part.backend.evaluation_copy(u) for n, u in ups.items()})
                              if part.up_spec else at_reference)
                for name in group.modules:  # bytes: of the backend's own modules
                    table[name] = (_bytes(refs[name]), _bytes(real[part.component][name]), _bytes(ups[name]))
                results.append(GroupResult(
                    name=_label(part, main, group.name), modules=group.modules, rel_error=uniform - at_reference,
                    bytes_ref=sum(table[n][0] for n in group.modules),
                    bytes_quant=sum(table[n][1] for n in group.modules),
                    rel_error_upgrade=at_upgrade - at_reference if part.up_spec else 0.0,
                    bytes_upgrade=sum(table[n][2] for n in group.modules),
                    component="" if part is main else part.component))
    finally:
        for part, old in reversed(originals):
            part.swapper.swap(old)
    return results, errors, uniform, quantized


def measure_promoted(images: _Images, parts: dict[str, _Part], quantized: dict[str, dict[str, Any]],
                     groups: list[GroupResult], denoiser: str) -> float:
    """End images of the uniform recipe, and of it with each of ``groups`` promoted to the
    reference precision: each group's ``image_mse`` becomes the image MSE its promotion removes
    (its measured gain), its ``psnr_db`` the PSNR with it promoted. Returns the uniform image MSE."""
    uniform = images.mse_with([(parts[c], layers) for c, layers in quantized.items()])
    for group in groups:
        mine = group.component or denoiser
        swaps = [(parts[c], {n: q for n, q in layers.items() if c != mine or n not in group.modules})
                 for c, layers in quantized.items()]
        promoted = images.mse_with(swaps)
        group.image_mse = uniform - promoted
        group.psnr_db = _psnr_of(promoted)
    return uniform
