"""Word-level tokenizers over the shapes captions' vocabulary, built offline.

Both are ``tokenizers`` ``WordLevel`` models (lower-cased, split on whitespace and punctuation)
wrapped as ``PreTrainedTokenizerFast``, so ``FluxPipeline`` saves and reloads them like any Hub
tokenizer. Words outside the vocabulary become the unknown token.

- CLIP-like: ``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1 (also padding), ``<unk>`` = 2,
  template ``<|startoftext|> $A <|endoftext|>``, ``model_max_length=77``. Pair it with
  ``CLIPTextConfig(eos_token_id=1)`` so that CLIP pools at the first end-of-text token.
- T5-like: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, template ``$A </s>``, ``model_max_length=512``.
"""

from __future__ import annotations

from typing import Any

from diffquant.zoo.shapes.data import vocabulary

CLIP_BOS, CLIP_EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<unk>"
T5_PAD, T5_EOS = "<pad>", "</s>"


def _word_level(specials: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(specials + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return tok


def clip_tokenizer() -> Any:
    """The CLIP-like tokenizer (bos 0, eos = pad 1, unk 2; 77 tokens)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _word_level([CLIP_BOS, CLIP_EOS, UNK])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_BOS} $A {CLIP_EOS}", pair=f"{CLIP_BOS} $A {CLIP_EOS} $B {CLIP_EOS}",
        special_tokens=[(CLIP_BOS, 0), (CLIP_EOS, 1)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=CLIP_BOS, eos_token=CLIP_EOS, pad_token=CLIP_EOS,
        unk_token=UNK, model_max_length=77, padding_side="right",
    )


def t5_tokenizer() -> Any:
    """The T5-like tokenizer (pad 0, eos 1, unk 2; ``$A </s>``; 512 tokens)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _word_level([T5_PAD, T5_EOS, UNK])
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {T5_EOS}", pair=f"$A {T5_EOS} $B {T5_EOS}", special_tokens=[(T5_EOS, 1)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=T5_EOS, pad_token=T5_PAD, unk_token=UNK,
        model_max_length=512, padding_side="right",
    )
