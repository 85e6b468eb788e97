"""Inputs of the denoiser captured from reference generations, and its outputs on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Captured:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]  # (args, kwargs) of chosen denoiser calls
    outputs: list[Any]  # the reference denoiser's output for each call (float32)
    steps: int
    prompts: list[str]
    seed: int
    # Where each chosen call comes from: (prompt index, its place within a denoising step); with
    # true CFG a step makes two calls that differ in their text conditioning.
    origins: list[tuple[int, int]] = field(default_factory=list)
    # Per prompt, the denoiser calls of the first step: what changes in them when a text encoder
    # changes is the text conditioning (the seeded latents and timestep are the same).
    first_calls: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] = field(default_factory=list)


def _clone(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, first and last included."""
    if k >= n:
        return list(range(n))
    if k == 1:
        return [n // 2]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def capture_inputs(pipe: Any, denoiser: Any, prompts: list[str], *, seed: int, steps: int | None,
                   calls_per_prompt: int) -> Captured:
    """Run the reference pipeline once per prompt and keep ``calls_per_prompt`` denoiser calls
    spread across the schedule (with true CFG, a step makes two calls: both are candidates)."""
    from diffquant.pipeline import generate

    recorded: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        recorded.append((_clone(args), _clone(kwargs)))

    chosen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    origins: list[tuple[int, int]] = []
    first_calls = []
    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for index, prompt in enumerate(prompts):
            recorded.clear()
            done: list[int] = []
            generate(pipe, prompt, seed=seed, steps=steps, step_callback=done.append)
            per_step = max(1, len(recorded) // max(1, len(done)))
            picked = spread(len(recorded), calls_per_prompt)
            chosen += [recorded[i] for i in picked]
            origins += [(index, i % per_step) for i in picked]
            first_calls.append(recorded[:per_step])
    finally:
        handle.remove()
    outputs = [run_denoiser(denoiser, call) for call in chosen]
    used_steps = steps if steps is not None else -1
    return Captured(chosen, outputs, used_steps, list(prompts), seed, origins, first_calls)


class _Stop(Exception):
    """Raised by a hook to end a generation at its first denoising step."""


def first_step_calls(pipe: Any, denoiser: Any, captured: Captured) -> list[list[tuple[tuple[Any, ...], dict[str, Any]]]]:
    """Per captured prompt, the denoiser calls of the first step as the pipeline makes them now
    (text encoders as they currently are); the generation stops there, so no step is run."""
    from diffquant.pipeline import generate

    out = []
    for prompt, reference in zip(captured.prompts, captured.first_calls, strict=True):
        recorded: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], store: list = recorded,
                 want: int = len(reference)) -> None:
            store.append((_clone(args), _clone(kwargs)))
            if len(store) >= want:
                raise _Stop

        handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            generate(pipe, prompt, seed=captured.seed, steps=captured.steps if captured.steps > 0 else None)
        except _Stop:
            pass
        finally:
            handle.remove()
        out.append(recorded)
    return out


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return False
    try:
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):  # containers of tensors: substituting is harmless
        return False


def recondition(captured: Captured, firsts: list[list[tuple[tuple[Any, ...], dict[str, Any]]]]
                ) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The captured calls with their text conditioning replaced by the one in ``firsts``: an
    argument that differs between the reference first-step call and the new one came from the
    text encoders (everything else there is seeded and identical), so it is swapped in."""
    calls = []
    for (args, kwargs), (prompt, place) in zip(captured.calls, captured.origins, strict=True):
        ref_args, ref_kwargs = captured.first_calls[prompt][place]
        new_args, new_kwargs = firsts[prompt][place]
        args = tuple(new_args[i] if i < min(len(new_args), len(ref_args)) and not _same(new_args[i], ref_args[i])
                     else a for i, a in enumerate(args))
        kwargs = {k: new_kwargs[k] if k in new_kwargs and not _same(new_kwargs[k], ref_kwargs.get(k)) else v
                  for k, v in kwargs.items()}
        calls.append((args, kwargs))
    return calls


def run_denoiser(denoiser: Any, call: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    import torch

    args, kwargs = call
    kwargs = {**kwargs, "return_dict": False}
    with torch.no_grad():
        out = denoiser(*args, **kwargs)
    return (out[0] if isinstance(out, (tuple, list)) else out).float()
