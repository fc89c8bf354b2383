"""Tokenizers built locally with the `tokenizers` library: char-level and a small BPE."""

from __future__ import annotations

import string
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
#: Every character the curriculum can produce: printable ASCII and the newline stop string.
CHARSET = "\n" + "".join(chr(c) for c in range(32, 127))


def _wrap(tok: Tokenizer, max_length: int):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS,
        model_max_length=max_length, padding_side="right", clean_up_tokenization_spaces=False,
    )


def char_tokenizer(max_length: int = 128):
    """One token per character; decoding concatenates, so text round-trips exactly.

    A BPE model with no merges splits text into single characters; `Fuse` joins them back
    without the spaces a plain decoder would insert.
    """
    vocab = {t: i for i, t in enumerate((*SPECIALS, *CHARSET))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.add_special_tokens(list(SPECIALS))
    tok.decoder = decoders.Fuse()
    return _wrap(tok, max_length)


def bpe_tokenizer(corpus: Iterable[str], vocab_size: int = 320, max_length: int = 128):
    """A byte-level BPE trained on ``corpus``; digits stay single tokens so sums stay learnable."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return _wrap(tok, max_length)


def round_trips(tokenizer, text: str = string.printable.strip() + "\n") -> bool:
    """Whether decode(encode(text)) gives back ``text`` unchanged."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids, skip_special_tokens=True) == text
