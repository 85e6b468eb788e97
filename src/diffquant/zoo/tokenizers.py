"""Offline tokenizers for the zoo's pipelines.

No tokenizer can be downloaded, so the zoo trains small byte-level BPE tokenizers with the
``tokenizers`` library on a fixed, made-up prompt corpus and wraps them as
``PreTrainedTokenizerFast``. Byte-level BPE never needs ``<unk>``: any text encodes, and decoding
gives the (normalised) text back. Training is deterministic, so two builds give identical files.

- :func:`clip_like_tokenizer`: ``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1 (also the padding
  token), template ``<|startoftext|> $A <|endoftext|>``, lower-cased, ``model_max_length=77``.
  Pair it with ``CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1)``: an eos id other
  than 2 makes CLIP pool at the first eos token, as the real CLIP does.
- :func:`t5_like_tokenizer`: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, template ``$A </s>``,
  case kept, ``model_max_length=512``.
"""

from __future__ import annotations

import itertools

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
T5_PAD, T5_EOS, T5_UNK = "<pad>", "</s>", "<unk>"

_ADJECTIVES = ("red", "blue", "green", "golden", "tiny", "huge", "old", "shiny", "misty", "quiet",
               "ancient", "neon", "wooden", "frozen", "glowing", "rusty")
_SUBJECTS = ("cat", "dog", "castle", "robot", "forest", "city", "lighthouse", "mountain", "teapot",
             "dragon", "bicycle", "garden", "astronaut", "river", "owl", "violin")
_PLACES = ("on a hill", "in the rain", "at sunset", "under the sea", "in space", "on a table",
           "in a snowy field", "by the lake", "in a busy street", "at night")
_STYLES = ("oil painting", "photograph", "watercolor", "3D render", "pencil sketch", "pixel art",
           "cinematic lighting", "studio portrait", "highly detailed", "soft focus")


def prompt_corpus() -> list[str]:
    """A fixed list of several hundred made-up prompts (no randomness: same list every call)."""
    prompts = []
    for i, (adj, subject) in enumerate(itertools.product(_ADJECTIVES, _SUBJECTS)):
        place = _PLACES[i % len(_PLACES)]
        style = _STYLES[(i * 7) % len(_STYLES)]
        prompts.append(f"A {adj} {subject} {place}, {style}.")
        prompts.append(f"{style.capitalize()} of the {subject}, {adj} colours, {place} #{i}")
    return prompts


def _train_bpe(special_tokens: list[str], vocab_size: int, lowercase: bool) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    steps: list[normalizers.Normalizer] = [normalizers.NFC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,  # ids 0, 1, 2... in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(prompt_corpus(), trainer=trainer)
    return tokenizer


def clip_like_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A CLIP-style tokenizer: bos=0, eos=pad=1, ``bos $A eos``, 77 tokens, lower-cased."""
    tok = _train_bpe([CLIP_BOS, CLIP_EOS], vocab_size, lowercase=True)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_BOS} $A {CLIP_EOS}",
        pair=f"{CLIP_BOS} $A {CLIP_EOS} $B {CLIP_EOS}",
        special_tokens=[(CLIP_BOS, 0), (CLIP_EOS, 1)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=CLIP_BOS, eos_token=CLIP_EOS, pad_token=CLIP_EOS,
        unk_token=CLIP_EOS, model_max_length=77, padding_side="right",
    )


def t5_like_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A T5-style tokenizer: pad=0, eos=1, unk=2, ``$A </s>``, 512 tokens, case kept."""
    tok = _train_bpe([T5_PAD, T5_EOS, T5_UNK], vocab_size, lowercase=False)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {T5_EOS}",
        pair=f"$A {T5_EOS} $B {T5_EOS}",
        special_tokens=[(T5_EOS, 1)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=T5_EOS, pad_token=T5_PAD, unk_token=T5_UNK,
        model_max_length=512, padding_side="right",
    )
