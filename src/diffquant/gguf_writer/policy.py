"""Which GGUF type each tensor gets, following the community converters' rules.

In order (first rule that applies wins):
1. 1-D tensors (biases, norm scales) and tiny ones (<= 1024 values) stay F32, as in
   ComfyUI-GGUF's ``convert.py``: they cost nothing and diffusers loads them as plain tensors.
2. Tensors with more than 2 dimensions (convolution kernels) keep a float type: diffusers only
   runs quantized weights through its GGUF *linear* layer.
3. ``--keep`` patterns, then the built-in keep list (the embedders in front of and the final
   layer behind the blocks -- ComfyUI-GGUF's list), take the pattern's type or the keep type:
   the source's own half precision (BF16 for bf16 weights, F16 for fp16), else F32.
4. Everything else gets the requested type.
A row length that is not a whole number of blocks falls back like llama.cpp's
``llama-quantize``: Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and to the keep
type when even 32 does not divide the row.

Patterns: comma-separated ``PATTERN`` or ``PATTERN=TYPE``. A pattern with ``* ? [`` is an
fnmatch pattern over the whole tensor name (``proj_out.*`` is only the top-level one); a plain
word matches anywhere in the name (``norm`` matches ``transformer_blocks.0.norm1.linear.weight``).
A tensor matches when its output name or any source (diffusers) name it is made from matches.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from diffquant.errors import DiffquantError
from diffquant.gguf_writer.quantize import BLOCK, SUPPORTED_TYPES, can_quantize, normalize_type

SMALL_TENSOR_VALUES = 1024  # ComfyUI-GGUF's QUANTIZATION_THRESHOLD
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# The tensors before the first and after the last block (diffusers and BFL names): small,
# and the most sensitive (ComfyUI-GGUF keeps the BFL ones in high precision too).
DEFAULT_KEEP = (
    "time_text_embed.*", "time_embedding.*", "add_embedding.*", "context_embedder.*",
    "x_embedder.*", "pos_embed.*", "norm_out.*", "proj_out.*",
    "time_in.*", "vector_in.*", "guidance_in.*", "txt_in.*", "img_in.*", "final_layer.*",
)
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class KeepRule:
    pattern: str
    qtype: str | None = None  # None: the keep type
    builtin: bool = False

    def matches(self, names: Iterable[str]) -> bool:
        if _GLOB_CHARS & set(self.pattern):
            return any(fnmatch.fnmatchcase(n, self.pattern) for n in names)
        return any(self.pattern in n for n in names)

    def __str__(self) -> str:
        return self.pattern + (f"={self.qtype}" if self.qtype else "")


@dataclass(frozen=True)
class Choice:
    qtype: str
    reason: str


def parse_keep(text: str | None) -> list[KeepRule]:
    """'norm,*.mod*=Q8_0' -> [KeepRule('norm'), KeepRule('*.mod*', 'Q8_0')]."""
    rules: list[KeepRule] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        pattern, sep, qtype = (s.strip() for s in item.partition("="))
        if not pattern:
            raise DiffquantError(f"Bad --keep item {item!r}: the pattern before '=' is empty.",
                                 hint="write PATTERN or PATTERN=TYPE, e.g. --keep 'norm,*.mod*=Q8_0'")
        if sep and not qtype:
            raise DiffquantError(f"Bad --keep item {item!r}: no type after '='.",
                                 hint=f"one of {', '.join(SUPPORTED_TYPES)}")
        if pattern.count("[") != pattern.count("]"):
            raise DiffquantError(f"Bad --keep pattern {pattern!r}: unbalanced brackets.")
        rules.append(KeepRule(pattern, normalize_type(qtype) if sep else None))
    return rules


def keep_type_for(source_dtype: str) -> str:
    """The high-precision type for kept tensors: the source's half type, else F32."""
    return {"BF16": "BF16", "F16": "F16"}.get(source_dtype.upper(), "F32")


def fallback_type(qtype: str, row_size: int, keep_type: str) -> str:
    """A type whose blocks fit rows of ``row_size`` values (llama-quantize's fallbacks)."""
    if can_quantize(qtype, row_size):
        return qtype
    alt = FALLBACK.get(qtype)
    if alt and can_quantize(alt, row_size):
        return alt
    return keep_type


class TypePolicy:
    """Chooses each tensor's type and remembers which patterns matched."""

    def __init__(self, qtype: str, keep: str | None = None, default_keep: bool = True) -> None:
        from diffquant.gguf_writer.mixes import is_mix, mix_rules

        mix: list[tuple[str, str]] = []
        if is_mix(qtype):  # a named mix (Q4_K_M): its base type plus per-role types
            qtype, mix = mix_rules(qtype)
        self.qtype = normalize_type(qtype)
        self.rules = parse_keep(keep)
        if default_keep:
            self.rules += [KeepRule(p, builtin=True) for p in DEFAULT_KEEP]
        self.rules += [KeepRule(p, t, builtin=True) for p, t in mix]
        self.used: set[KeepRule] = set()

    def choose(self, name: str, shape: tuple[int, ...], source_dtype: str,
               source_names: Iterable[str] = ()) -> Choice:
        keep_type = keep_type_for(source_dtype)
        n_values = 1
        for dim in shape:
            n_values *= dim
        if len(shape) <= 1:
            return Choice("F32", "1-D")
        if n_values <= SMALL_TENSOR_VALUES:
            return Choice("F32", "small")
        if len(shape) > 2:
            # diffusers treats every type but F32/F16 as quantized and only dequantizes inside its
            # GGUF *linear* layer: a BF16 convolution kernel would reach conv2d as raw bytes.
            return Choice("F16" if keep_type == "F16" else "F32", f"{len(shape)}-D")
        names = [name, *source_names]
        for rule in self.rules:
            if rule.matches(names):
                self.used.add(rule)
                wanted = rule.qtype or keep_type
                label = ("mix" if rule.qtype else "default keep") if rule.builtin else "--keep"
                return self._fit(wanted, shape[-1], keep_type, f"{label} {rule}")
        return self._fit(self.qtype, shape[-1], keep_type, "")

    @staticmethod
    def _fit(wanted: str, row_size: int, keep_type: str, reason: str) -> Choice:
        chosen = fallback_type(wanted, row_size, keep_type)
        if chosen != wanted:
            why = f"row {row_size} not a multiple of {BLOCK[wanted][0]}"
            reason = f"{reason}; {why}" if reason else why
        return Choice(chosen, reason)

    def unused_patterns(self) -> list[str]:
        return [str(r) for r in self.rules if not r.builtin and r not in self.used]

