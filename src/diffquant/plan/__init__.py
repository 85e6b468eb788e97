"""``diffquant plan``: every recipe's memory for a diffusers model, predicted from its config files.

    from diffquant.plan import plan_model
    p = plan_model("zoo:flux-dev-random", ["bf16", "bnb-nf4"], device="cuda")
    p.recipes[1].memory.weights_bytes

Weights are exact: each component is instantiated on the meta device (nothing allocated) and each
backend's ``stored_bytes`` counts its real storage format. Runtime memory (CUDA context,
activations, VAE decode, what offloading keeps resident) is modelled, and kept apart.
"""

from __future__ import annotations

from diffquant.plan.budget import format_bytes, parse_budget
from diffquant.plan.planner import ModelPlan, RecipePlan, plan_model

__all__ = ["ModelPlan", "RecipePlan", "format_bytes", "parse_budget", "plan_model"]
