"""llama.cpp's own grammar engine driven without a model: does a GBNF grammar accept a text, and random texts it allows.

Only the vocabulary of the offline GGUF is loaded (no weights). The grammar sampler masks candidate tokens exactly
as it does inside the server, so a random walk through the tokens it leaves open samples the grammar's language as
a model under constrained decoding could write it.
"""

from __future__ import annotations

import ctypes
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import llama_cpp

# Tokens that close something (a tag, a string, a list): favouring them keeps random texts short and varied.
_CLOSERS = (b"<", b"\n", b'"', b"]", b",")


def _utf8_prefix(data: bytes) -> bool:
    """Whether `data` is valid UTF-8, or valid UTF-8 missing the end of its last character."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.reason == "unexpected end of data"
    return True


class GrammarEngine:
    """The SmolLM2 vocabulary plus llama.cpp's grammar sampler."""

    def __init__(self, gguf_path: Path) -> None:
        self.llama = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
        self.vocab = self.llama._model.vocab
        count = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.pieces = [self.llama.detokenize([token]) for token in range(count)]
        self.eog = llama_cpp.llama_vocab_eos(self.vocab)
        self.texts = [token for token, piece in enumerate(self.pieces) if piece and token != self.eog]
        self.bytes = [token for token in self.texts if len(self.pieces[token]) == 1]  # every byte: never stuck

    def close(self) -> None:
        self.llama.close()

    @contextmanager
    def sampler(self, grammar: str) -> Iterator[ctypes.c_void_p]:
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            raise ValueError("llama.cpp could not parse the grammar")
        try:
            yield sampler
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def allowed(self, sampler: ctypes.c_void_p, tokens: Sequence[int]) -> list[int]:
        """The candidates the grammar leaves open in its current state."""
        data = (llama_cpp.llama_token_data * len(tokens))(*(llama_cpp.llama_token_data(t, 0.0, 0.0) for t in tokens))
        array = llama_cpp.llama_token_data_array(
            data=ctypes.cast(data, llama_cpp.llama_token_data_p), size=len(tokens), selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        return [array.data[i].id for i in range(array.size) if not math.isinf(array.data[i].logit)]

    def accepts(self, grammar: str, text: str) -> bool:
        """Whether the grammar takes `text`, token by token as the model would write it, and then lets it stop."""
        tokens = self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        with self.sampler(grammar) as sampler:
            for token in tokens:
                if not self.allowed(sampler, [token]):
                    return False
                llama_cpp.llama_sampler_accept(sampler, token)
            return bool(self.allowed(sampler, [self.eog]))

    def walk(self, grammar: str, rng: random.Random, *, close_bias: float = 0.2, max_steps: int = 5000) -> str:
        """A random text of the grammar: random open tokens until only end-of-generation is left."""
        written = b""
        with self.sampler(grammar) as sampler:
            for _ in range(max_steps):
                candidates = list(dict.fromkeys([*rng.sample(self.texts, 300), *self.bytes, self.eog]))
                open_tokens = self.allowed(sampler, candidates)
                if not open_tokens:
                    raise AssertionError(f"the grammar is stuck after {written!r}")
                if self.eog in open_tokens:
                    return written.decode("utf-8")
                # llama.cpp's grammar reads bytes after a UTF-8 lead byte as its continuation without checking them
                # (a model does not write such bytes); keep the text valid UTF-8 as a model's would be.
                open_tokens = [t for t in open_tokens if _utf8_prefix(written + self.pieces[t])]
                closers = [t for t in open_tokens if self.pieces[t].startswith(_CLOSERS)]
                token = rng.choice(closers if closers and rng.random() < close_bias else open_tokens)
                llama_cpp.llama_sampler_accept(sampler, token)
                written += self.pieces[token]
        raise AssertionError(f"no end after {max_steps} tokens: {written[-200:]!r}")
