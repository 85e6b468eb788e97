"""``zoo:shapes``: diffquant's built-in trained model, a small FLUX pipeline that draws one coloured
shape on a flat background from a caption such as "a small red circle at the top left on a blue
background", plus a CNN scorer that reads the attributes back from an image (prompt adherence).

Modules (imported lazily; this package itself imports nothing heavy):

- ``data``: the procedural caption -> image generator (deterministic, seeded)
- ``tokenizer``: word-level CLIP-like and T5-like tokenizers
- ``model``: the architecture, :func:`model.shipped_folder`, :func:`model.build_random`
- ``train``: flow-matching training of the VAE, text encoder and transformer, and of the scorer
  (run it with ``python scripts/train_shapes.py``)
- ``scorer``: :func:`scorer.load_scorer`, :func:`scorer.score_images`, the evaluation prompts
"""

from __future__ import annotations

DEFAULT_STEPS = 12
DEFAULT_SIZE = 64
DEFAULT_GUIDANCE = 1.0  # no effect: no guidance embedding, trained without CFG
