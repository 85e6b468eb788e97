"""What recipes can say: backends, their quant types and options, memory and compile modifiers,
and the seed's list of recipes. Pure data, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OptionDef:
    name: str
    kind: type  # bool | int | str
    help: str
    choices: tuple[str, ...] = ()  # str options: the values allowed
    types: tuple[str, ...] = ()  # quant options: the backend types that use it (empty: every type)
    applies_to: str = ""  # those types in words, for the error when another type is given it
    int_choices: tuple[int, ...] = ()  # int options: the values allowed (empty: see minimum/maximum)
    minimum: int | None = None
    maximum: int | None = None
    default: str | int | None = None  # a value that means the same as leaving the option out (dropped)
    excludes: tuple[str, ...] = ()  # options of the same token that mean nothing beside this one
    excludes_why: str = ""  # why, completing "<backend> 'opt' ..."
    noun: str = ""  # what its value is, in an error about it (e.g. "patterns")
    false_kept: bool = False  # bool options: an explicit false is an opt-out of an automatic default


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
    deprecated: str = ""  # upstream's deprecation notice and removal plan, shown by `diffquant recipes`
    tokens: dict[str, str] = field(default_factory=dict)  # own token names -> type, instead of <name>-<type>
    module: str = ""  # the module that implements it (diffquant.backends.BackendModule); default below
    hub_tag: str = ""  # the tag a model card gives it (default: its name)

    @property
    def module_path(self) -> str:
        return self.module or f"diffquant.backends.{self.name}"

    @property
    def tag(self) -> str:
        return self.hub_tag or self.name

    def token_names(self) -> list[str]:
        """Every quant token of this backend a user can write, e.g. 'bnb-nf4' or 'fp8-layerwise'."""
        return list(self.tokens) or [f"{self.name}-{t}" for t in self.types]

    def token_for(self, qtype: str) -> str:
        """The token a recipe name uses for ``qtype`` (the first of its own names, if it has them)."""
        return next((tok for tok, t in self.tokens.items() if t == qtype), f"{self.name}-{qtype}")


_SKIP = OptionDef("skip", str, "module-name patterns kept unquantized, separated by '|'")
_COMPUTE = OptionDef("compute_dtype", str, "dtype the matmuls run in",
                     choices=("bfloat16", "float16", "float32"))


def _types(*defs: tuple[str, str, float]) -> dict[str, TypeDef]:
    return {name: TypeDef(name, help_, bits) for name, help_, bits in defs}


# Quant token names: "<backend>-<type>", except layerwise casting, named as in diffusers' docs.
LAYERWISE_TOKENS = {"fp8-layerwise": "e4m3", "fp8-layerwise-e4m3": "e4m3", "fp8-layerwise-e5m2": "e5m2"}

BACKENDS: dict[str, BackendDef] = {
    "bnb": BackendDef(
        "bnb", "bitsandbytes", "bitsandbytes", "bnb",
        _types(("nf4", "4-bit NormalFloat, blockwise absmax (64)", 4.5),
               ("fp4", "4-bit float, blockwise absmax (64)", 4.5),
               ("int8", "LLM.int8() 8-bit rows with outlier handling", 8.0)),
        {"compute_dtype": _COMPUTE,
         "double_quant": OptionDef("double_quant", bool, "quantize the absmax scales too (4-bit only)",
                                   types=("nf4", "fp4"), applies_to="bnb 4-bit types (nf4, fp4)"),
         "skip": _SKIP},
        hub_tag="bitsandbytes",
    ),
    "torchao": BackendDef(
        "torchao", "torchao", "torchao", "torchao",
        _types(("int8wo", "int8 weight-only, per-channel scales (Int8WeightOnlyConfig)", 8.0),
               ("int4wo", "int4 weight-only, grouped (Int4WeightOnlyConfig; CUDA kernels)", 4.25),
               ("intx4wo", "int4 weight-only values via IntxWeightOnlyConfig (runs on CPU; stored in int8)", 8.0),
               ("fp8wo", "float8 e4m3 weight-only (Float8WeightOnlyConfig)", 8.0),
               ("int8dq", "int8 dynamic activations + int8 weights", 8.0),
               ("fp8dq", "float8 dynamic activations + float8 weights (CUDA, SM 8.9+)", 8.0),
               ("nvfp4", "NVFP4 activations + weights, fp8 scale per 16 (Blackwell, SM 10.0+)", 4.5),
               ("mxfp8", "MXFP8 activations + weights, e8m0 scale per 32 (Blackwell, SM 10.0+)", 8.25)),
        {"group_size": OptionDef("group_size", int, "weights per scale group (int4wo/intx4wo; int8wo: "
                                                    "grouped int8, e.g. 128)",
                                 types=("int4wo", "intx4wo", "int8wo"), int_choices=(32, 64, 128, 256),
                                 applies_to="torchao int4wo, intx4wo and int8wo (the other torchao types have "
                                            "no groups)"),
         "skip": _SKIP},
    ),
    "quanto": BackendDef(
        "quanto", "optimum-quanto", "optimum.quanto", "quanto",
        _types(("int8", "int8 weights", 8.0), ("int4", "int4 weights, grouped", 4.25),
               ("int2", "int2 weights, grouped", 2.25), ("fp8", "float8 e4m3 weights", 8.0)),
        {"skip": _SKIP},
        # diffusers 0.42.1: quantizers/quanto/quanto_quantizer.py and QuantoConfig, word for word.
        deprecated=("diffusers: \"The Quanto quantizer is deprecated and will be removed in version 1.0.0.\" "
                    "It suggests switching to bitsandbytes or torchao (on CPU: sdnq, torchao)."),
        hub_tag="optimum-quanto",
    ),
    "gguf": BackendDef(
        "gguf", "GGUF (llama.cpp block formats, loaded by diffusers)", "gguf", "core",
        _types(("bf16", "bfloat16 (no quantization)", 16.0), ("q8_0", "8-bit, blocks of 32", 8.5),
               ("q5_1", "5-bit + min, blocks of 32", 6.0), ("q5_0", "5-bit, blocks of 32", 5.5),
               ("q4_1", "4-bit + min, blocks of 32", 5.0), ("q4_0", "4-bit, blocks of 32", 4.5),
               ("q6_k", "6-bit K-quant, super-blocks of 256", 6.5625),
               ("q5_k", "5-bit K-quant", 5.5), ("q4_k", "4-bit K-quant", 4.5),
               ("q3_k", "3-bit K-quant", 3.4375), ("q2_k", "2-bit K-quant", 2.625),
               # Named mixes (llama.cpp's rules on diffusers names; docs/gguf.md): bits are the base's.
               ("q2_k_m", "Q2_K, attention v/output and FFN down at Q3_K", 2.625),
               ("q3_k_s", "Q3_K throughout", 3.4375),
               ("q3_k_m", "Q3_K, attention q/k/v/output and FFN down at Q4_K", 3.4375),
               ("q3_k_l", "Q3_K, attention v/output and FFN down at Q5_K, q/k at Q4_K", 3.4375),
               ("q4_k_s", "Q4_K, attention v at Q5_K", 4.5),
               ("q4_k_m", "Q4_K, attention v and FFN down at Q6_K, q/k at Q5_K", 4.5),
               ("q5_k_s", "Q5_K throughout", 5.5),
               ("q5_k_m", "Q5_K, attention q/k/v and FFN down at Q6_K", 5.5)),
        {"path": OptionDef("path", str, "a .gguf file to load; without it diffquant writes (and caches) one",
                           excludes=("keep", "layout"),
                           excludes_why="only apply when diffquant writes the file; a given path is loaded as it is."),
         "keep": OptionDef("keep", str, "name patterns written at higher precision, '|' separated "
                                        "(pattern or pattern=TYPE)", noun="patterns"),
         "layout": OptionDef("layout", str, "key layout of a written file", choices=("diffusers", "bfl"),
                             default="diffusers"),
         "cpu_kernel": OptionDef("cpu_kernel", bool, "CPU: dequantize each layer with diffquant's compiled "
                                                     "kernel into one reused bf16 buffer, then the bf16 GEMM "
                                                     "(docs/cpu-lowbit.md). Left out: on where it runs (CPU, "
                                                     "a C++ compiler); cpu_kernel=false: diffusers' path",
                                 false_kept=True)},
        denoiser_only=True,
    ),
    "layerwise": BackendDef(
        "layerwise", "FP8 layerwise casting (diffusers hooks)", "torch", "core",
        _types(("e4m3", "store weights in float8_e4m3fn, upcast per layer", 8.0),
               ("e5m2", "store weights in float8_e5m2, upcast per layer", 8.0)),
        {"skip": _SKIP},
        # Pipelines read a text encoder's dtype to cast its output: float8 storage would leak out.
        denoiser_only=True, tokens=LAYERWISE_TOKENS, hub_tag="fp8",
    ),
    "sdnq": BackendDef(
        "sdnq", "SDNQ (SD.Next quantization, diffusers SDNQConfig)", "sdnq", "sdnq",
        # Bits at FLUX widths: SDNQ keeps its scales (and uint zero points) in float32, one per group
        # of 2**(num_bits+2) weights (row-wise int8/fp8 with matmul).
        _types(("int8", "int8 weights, float32 scale per 1024 weights", 8.03),
               ("int6", "int6 weights packed, scale per 256", 6.125),
               ("int4", "int4 weights packed, scale per 64", 4.5),
               ("uint4", "uint4 weights packed, scale + zero point per 64", 5.0),
               ("fp8", "float8 e4m3 weights, scale per 1024", 8.03),
               ("fp6", "float6 e3m2 weights packed, scale per 256", 6.125),
               ("fp4", "float4 e2m1 weights packed, scale per 64", 4.5)),
        {"matmul": OptionDef("matmul", bool, "run the matmul in int8/fp8 on quantized activations "
                                             "(use_quantized_matmul) instead of dequantizing the weights"),
         "skip": _SKIP},
    ),
    "modelopt": BackendDef(
        "modelopt", "NVIDIA ModelOpt (diffusers NVIDIAModelOptConfig)", "modelopt.torch", "modelopt",
        _types(("fp8", "float8 e4m3 weights (FP8; CUDA, SM 8.9+)", 8.0),
               ("int8", "int8 weights (INT8; CUDA)", 8.0),
               ("int4", "int4 weights, blockwise (INT4; CUDA)", 4.25),
               ("nf4", "4-bit NormalFloat, blockwise (NF4; CUDA)", 4.5),
               ("nvfp4", "NVIDIA FP4: e2m1 values, fp8 scale per 16 (NVFP4; Blackwell, SM 10.0+)", 4.5)),
        {"skip": _SKIP},
        # diffusers has NVIDIAModelOptConfig; transformers has no ModelOpt config for text encoders.
        denoiser_only=True,
    ),
}


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

OFFLOAD_TOKENS = {
    "offload-model": "model", "offload-seq": "sequential", "offload-sequential": "sequential",
    "offload-group-leaf": "group-leaf", "offload-group-block": "group-block",
}
OFFLOAD_OPTIONS: dict[str, OptionDef] = {
    "blocks": OptionDef("blocks", int, "blocks per group (offload-group-block)", minimum=1, maximum=1024),
    "stream": OptionDef("stream", bool, "overlap transfers with compute on a CUDA stream"),
    "disk": OptionDef("disk", bool, "keep offloaded weights in files instead of RAM"),
}
VAE_TOKENS = {"vae-tiling": "vae_tiling", "vae-slicing": "vae_slicing"}
COMPILE_TOKEN = "compile"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_OPTIONS: dict[str, OptionDef] = {
    "mode": OptionDef("mode", str, "torch.compile mode", choices=COMPILE_MODES),
    "fullgraph": OptionDef("fullgraph", bool, "fail instead of graph-breaking"),
    "regional": OptionDef("regional", bool, "compile only the repeated transformer blocks "
                                            "(diffusers' compile_repeated_blocks)"),
    "components": OptionDef("components", str, "what to compile, '|' separated: denoiser (the default) "
                                               "or component names, e.g. denoiser|vae"),
}
DEFAULT_COMPILE_COMPONENTS = ("denoiser",)
# Types a GGUF keep pattern may ask for (the writer's types: gguf_writer.quantize.SUPPORTED_TYPES).
GGUF_KEEP_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0",
                   "Q3_K", "Q2_K")

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
    # "<backend>-<type>" names first, then the backends with names of their own (as listed before)
    ordered = sorted(BACKENDS.values(), key=lambda b: bool(b.tokens))
    return [token for b in ordered for token in b.token_names()]


def own_token(name: str) -> tuple[BackendDef, str] | None:
    """The backend and type of a token a backend names itself (``fp8-layerwise``), else None."""
    return next(((b, b.tokens[name]) for b in BACKENDS.values() if name in b.tokens), None)


def all_token_names() -> list[str]:
    return (quant_token_names() + list(DTYPES) + list(OFFLOAD_TOKENS) + list(VAE_TOKENS)
            + [COMPILE_TOKEN])
