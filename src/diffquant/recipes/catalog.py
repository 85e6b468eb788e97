"""What recipes can say: backends, their quant types and options, memory and compile modifiers,
and the seed's list of recipes. Pure data, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OptionDef:
    name: str
    kind: type  # bool | int | str
    help: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class TypeDef:
    name: str
    help: str
    bits: float  # nominal bits per quantized weight, incl. scale overhead


@dataclass(frozen=True)
class BackendDef:
    name: str  # recipe prefix, e.g. "bnb"
    title: str
    package: str  # import name that must be present
    extra: str  # pip extra that installs it
    types: dict[str, TypeDef]
    options: dict[str, OptionDef] = field(default_factory=dict)
    denoiser_only: bool = False  # True: default target is the denoiser only (e.g. GGUF files)


_SKIP = OptionDef("skip", str, "module-name patterns kept unquantized, separated by '|'")
_COMPUTE = OptionDef("compute_dtype", str, "dtype the matmuls run in",
                     choices=("bfloat16", "float16", "float32"))


def _types(*defs: tuple[str, str, float]) -> dict[str, TypeDef]:
    return {name: TypeDef(name, help_, bits) for name, help_, bits in defs}


BACKENDS: dict[str, BackendDef] = {
    "bnb": BackendDef(
        "bnb", "bitsandbytes", "bitsandbytes", "bnb",
        _types(("nf4", "4-bit NormalFloat, blockwise absmax (64)", 4.5),
               ("fp4", "4-bit float, blockwise absmax (64)", 4.5),
               ("int8", "LLM.int8() 8-bit rows with outlier handling", 8.0)),
        {"compute_dtype": _COMPUTE,
         "double_quant": OptionDef("double_quant", bool, "quantize the absmax scales too (4-bit only)"),
         "skip": _SKIP},
    ),
    "torchao": BackendDef(
        "torchao", "torchao", "torchao", "torchao",
        _types(("int8wo", "int8 weight-only, per-channel scales (Int8WeightOnlyConfig)", 8.0),
               ("int4wo", "int4 weight-only, grouped (Int4WeightOnlyConfig; CUDA kernels)", 4.25),
               ("intx4wo", "int4 weight-only values via IntxWeightOnlyConfig (runs on CPU; stored in int8)", 8.0),
               ("fp8wo", "float8 e4m3 weight-only (Float8WeightOnlyConfig)", 8.0),
               ("int8dq", "int8 dynamic activations + int8 weights", 8.0),
               ("fp8dq", "float8 dynamic activations + float8 weights (CUDA, SM 8.9+)", 8.0)),
        {"group_size": OptionDef("group_size", int, "weights per scale group (int4wo/intx4wo)"),
         "skip": _SKIP},
    ),
    "quanto": BackendDef(
        "quanto", "optimum-quanto", "optimum.quanto", "quanto",
        _types(("int8", "int8 weights", 8.0), ("int4", "int4 weights, grouped", 4.25),
               ("int2", "int2 weights, grouped", 2.25), ("fp8", "float8 e4m3 weights", 8.0)),
        {"skip": _SKIP},
    ),
    "gguf": BackendDef(
        "gguf", "GGUF (llama.cpp block formats, loaded by diffusers)", "gguf", "core",
        _types(("bf16", "bfloat16 (no quantization)", 16.0), ("q8_0", "8-bit, blocks of 32", 8.5),
               ("q5_1", "5-bit + min, blocks of 32", 6.0), ("q5_0", "5-bit, blocks of 32", 5.5),
               ("q4_1", "4-bit + min, blocks of 32", 5.0), ("q4_0", "4-bit, blocks of 32", 4.5),
               ("q6_k", "6-bit K-quant, super-blocks of 256", 6.5625),
               ("q5_k", "5-bit K-quant", 5.5), ("q4_k", "4-bit K-quant", 4.5),
               ("q3_k", "3-bit K-quant", 3.4375), ("q2_k", "2-bit K-quant", 2.625)),
        {"path": OptionDef("path", str, "a .gguf file to load; without it diffquant writes (and caches) one"),
         "keep": OptionDef("keep", str, "name patterns written at higher precision, '|' separated "
                                        "(pattern or pattern=TYPE)"),
         "layout": OptionDef("layout", str, "key layout of a written file", choices=("diffusers", "bfl")),
         "cpu_kernel": OptionDef("cpu_kernel", bool, "CPU: dequantize each layer with diffquant's compiled "
                                                     "kernel into one reused bf16 buffer, then the bf16 GEMM "
                                                     "(docs/cpu-lowbit.md)")},
        denoiser_only=True,
    ),
    "layerwise": BackendDef(
        "layerwise", "FP8 layerwise casting (diffusers hooks)", "torch", "core",
        _types(("e4m3", "store weights in float8_e4m3fn, upcast per layer", 8.0),
               ("e5m2", "store weights in float8_e5m2, upcast per layer", 8.0)),
        {"skip": _SKIP},
        # Pipelines read a text encoder's dtype to cast its output: float8 storage would leak out.
        denoiser_only=True,
    ),
}

# Quant token names: "<backend>-<type>", except layerwise casting, named as in diffusers' docs.
LAYERWISE_TOKENS = {"fp8-layerwise": "e4m3", "fp8-layerwise-e4m3": "e4m3", "fp8-layerwise-e5m2": "e5m2"}

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

OFFLOAD_TOKENS = {
    "offload-model": "model", "offload-seq": "sequential", "offload-sequential": "sequential",
    "offload-group-leaf": "group-leaf", "offload-group-block": "group-block",
}
OFFLOAD_OPTIONS: dict[str, OptionDef] = {
    "blocks": OptionDef("blocks", int, "blocks per group (offload-group-block)"),
    "stream": OptionDef("stream", bool, "overlap transfers with compute on a CUDA stream"),
    "disk": OptionDef("disk", bool, "keep offloaded weights in files instead of RAM"),
}
VAE_TOKENS = {"vae-tiling": "vae_tiling", "vae-slicing": "vae_slicing"}
COMPILE_TOKEN = "compile"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_OPTIONS: dict[str, OptionDef] = {
    "mode": OptionDef("mode", str, "torch.compile mode", choices=COMPILE_MODES),
    "fullgraph": OptionDef("fullgraph", bool, "fail instead of graph-breaking"),
}

# The recipes of the seed ("Exploring Quantization Backends in Diffusers"), in its order.
SEED_RECIPES: tuple[str, ...] = (
    "bf16", "bnb-nf4", "bnb-int8", "torchao-int4wo", "torchao-int8wo", "torchao-fp8wo",
    "quanto-int4", "quanto-int8", "quanto-fp8", "gguf-q2_k", "gguf-q4_1", "gguf-q8_0",
    "fp8-layerwise", "bnb-nf4+offload-model", "bnb-int8+offload-model",
    "fp8-layerwise+offload-group-leaf(stream)", "torchao-int4wo+compile(fullgraph,mode=max-autotune)",
    "torchao-int8wo+compile(fullgraph,mode=max-autotune)",
    "torchao-fp8wo+compile(fullgraph,mode=max-autotune)",
)


def quant_token_names() -> list[str]:
    """Every quant token a user can write, e.g. 'bnb-nf4', 'gguf-q4_k', 'fp8-layerwise'."""
    names = [f"{b.name}-{t}" for b in BACKENDS.values() if b.name != "layerwise" for t in b.types]
    return names + list(LAYERWISE_TOKENS)


def all_token_names() -> list[str]:
    return (quant_token_names() + list(DTYPES) + list(OFFLOAD_TOKENS) + list(VAE_TOKENS)
            + [COMPILE_TOKEN])
