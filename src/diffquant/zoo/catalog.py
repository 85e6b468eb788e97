"""The built-in zoo entries. Builders are named lazily ("module:function") so that listing the
zoo imports neither torch nor diffusers."""

from __future__ import annotations

from diffquant.zoo import ZooEntry, register

register(ZooEntry(
    name="tiny-flux",
    description="FLUX architecture (FluxTransformer2DModel, CLIP + T5, AutoencoderKL, FlowMatch), "
                "a few M params, random weights: a 64x64 image in well under a second on CPU.",
    builder="diffquant.zoo.flux:build_tiny_flux",
    pipeline_class="FluxPipeline",
    defaults=(4, 64, 64, 3.5),  # (steps, height, width, guidance)
))
register(ZooEntry(
    name="flux-dev-slice",
    description="FLUX.1-dev's exact layer widths (3072 = 24x128 heads, joint dim 4096, pooled 768, "
                "in_channels 64, T5-XXL widths) with 1 double + 2 single blocks and a 1-layer T5.",
    builder="diffquant.zoo.flux:build_flux_dev_slice",
    pipeline_class="FluxPipeline",
    defaults=(4, 256, 256, 3.5),  # (steps, height, width, guidance)
))
register(ZooEntry(
    name="flux-dev-random",
    description="The full-size FLUX.1-dev architecture (12B transformer, 4.7B T5) with random "
                "weights, for GPU benchmarks without a download (~34 GB on disk in bf16).",
    builder="diffquant.zoo.flux:build_flux_dev_random",
    pipeline_class="FluxPipeline",
    defaults=(28, 1024, 1024, 3.5),  # (steps, height, width, guidance)
))
register(ZooEntry(
    name="tiny-sd3",
    description="SD3 architecture (SD3Transformer2DModel/MMDiT, two CLIPs + T5), tiny, random weights.",
    builder="diffquant.zoo.sd3:build_tiny_sd3",
    pipeline_class="StableDiffusion3Pipeline",
    defaults=(4, 64, 64, 5.0),  # (steps, height, width, guidance)
))
register(ZooEntry(
    name="shapes",
    description="The built-in trained model: a small FLUX pipeline that draws coloured shapes from "
                "captions (shipped with the package, trained by scripts/train_shapes.py).",
    builder="diffquant.zoo.shapes.model:shipped_folder",
    pipeline_class="FluxPipeline",
    shipped=True,
))
register(ZooEntry(
    name="shapes-random",
    description="The shapes model's architecture with random weights (the chance baseline).",
    builder="diffquant.zoo.shapes.model:build_random",
    pipeline_class="FluxPipeline",
    version=2,  # 2: 3-level VAE, diffquant.json with pipeline_kwargs (T5 length 32, true CFG)
))
