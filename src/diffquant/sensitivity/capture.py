"""Inputs of the denoiser captured from reference generations, and its outputs on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Captured:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]]  # (args, kwargs) of chosen denoiser calls
    outputs: list[Any]  # the reference denoiser's output for each call (float32)
    steps: int
    prompts: list[str]
    seed: int


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
    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for prompt in prompts:
            recorded.clear()
            generate(pipe, prompt, seed=seed, steps=steps)
            chosen += [recorded[i] for i in spread(len(recorded), calls_per_prompt)]
    finally:
        handle.remove()
    outputs = [run_denoiser(denoiser, call) for call in chosen]
    used_steps = steps if steps is not None else -1
    return Captured(chosen, outputs, used_steps, list(prompts), seed)


def run_denoiser(denoiser: Any, call: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    import torch

    args, kwargs = call
    kwargs = {**kwargs, "return_dict": False}
    with torch.no_grad():
        out = denoiser(*args, **kwargs)
    return (out[0] if isinstance(out, (tuple, list)) else out).float()
