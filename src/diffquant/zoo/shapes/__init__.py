"""``zoo:shapes``: diffquant's built-in trained model, a small FLUX pipeline that draws one coloured
shape on a flat background from a caption such as "a small red circle at the top left on a blue
background", plus a CNN scorer that reads the attributes back from an image (prompt adherence).

Modules (imported lazily; this package itself imports nothing heavy):

- ``data``: the procedural caption -> image generator (deterministic, seeded)
- ``tokenizer``: word-level CLIP-like and T5-like tokenizers
- ``model``: the architecture, :func:`model.shipped_folder`, :func:`model.build_random`
- ``train``: flow-matching training of the VAE, text encoder and transformer, and of the scorer
  (run it with ``python scripts/train_shapes.py --out DIR``)
- ``scorer``: :func:`scorer.load_scorer`, :func:`scorer.score_images`, the evaluation prompts
"""

from __future__ import annotations

DEFAULT_STEPS = 12
DEFAULT_SIZE = 64
DEFAULT_GUIDANCE = 1.0  # no effect: no guidance embedding (FLUX.1-dev's distilled guidance)
# What the model was trained for, passed to the pipeline by diffquant (from diffquant.json): a short
# T5 sequence (the real caption tokens are not drowned by ~500 pads in attention) and true
# classifier-free guidance against the empty prompt (training drops 10% of the captions).
DEFAULT_T5_LENGTH = 32
DEFAULT_TRUE_CFG = 5.0
DEFAULT_PIPELINE_KWARGS = {"max_sequence_length": DEFAULT_T5_LENGTH, "negative_prompt": "",
                           "true_cfg_scale": DEFAULT_TRUE_CFG}
# What `diffquant bench` draws on this model by default (diffquant.json "prompts"): seen combinations.
DEFAULT_PROMPTS = ("a red circle on a white background",
                   "a small blue square at the top left on a gray background",
                   "a large orange triangle at the bottom right on a black background")
