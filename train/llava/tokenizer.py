"""The tiny LM's tokenizer: a byte-level BPE trained on captions, with the input format's
special tokens (curate.models.llava.tokens) in its vocabulary."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from curate.models.llava.tokens import add_special_tokens, special_tokens


def train_tokenizer(texts: Iterable[str], vocab_size: int, max_grid: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` with the format's special tokens in its vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens(max_grid),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return add_special_tokens(PreTrainedTokenizerFast(tokenizer_object=tokenizer), max_grid)
