"""Deterministic prompt text of an exact length, with no network and no model files.

Input: a length and a key (a request id, a prefix-block id). Output: text of exactly
that many whitespace-separated words, drawn from a built-in list of short English
words that are each one token in the Llama 2 and Llama 3 vocabularies (so those
tokenizers count the same number, plus one token per newline); or, when
``workload.tokenizer`` names a ``tokenizer.json``, exactly that many of its tokens.
The same key always gives the same text; different keys give different text from
the first words on, so servers' prefix caches see no accidental sharing.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pyarrow as pa

from loadgen.workload.errors import WorkloadError

#: 512 words, each a single token (with and without a leading space) for Llama 2 and Llama 3.
WORDS: tuple[str, ...] = tuple(
    """
    the of and to in is it you that he was for on are with as his they be at one have this
    from or had by word but what some we can out other were all there when up use your how
    said an each she which do their time if will way about many then them write would like
    so these her long make thing see him two has look more day could go come did number
    sound no most people my over know water than call first who may down side been now find
    any new work part take get place made live where after back little only round man year
    came show every good me give our under name very through just form sentence great think
    say help low line turn cause much mean before move right boy old too same tell does set
    three want air well also play small end put home read hand port large spell add even
    land here must big high such follow act why ask men change went light kind off need
    house picture try us again animal point mother world near build self earth father head
    stand own page should country found answer school grow study still learn plant cover
    food sun four between state keep eye never last let thought city tree cross farm hard
    start might story far sea draw left late run while press close night real life few north
    open next white children begin got walk example ease paper group always music those both
    mark often letter until mile river car care second book carry took science eat room
    friend idea fish stop once base hear horse cut sure watch color face wood main plain
    girl usual young ready above ever red list though feel talk bird soon body dog family
    direct pose leave song measure door product black short class wind question complete
    ship area half rock order fire south problem piece pass since top whole king space heard
    best hour better true during five remember step early hold west ground interest reach
    fast verb sing listen six table travel less ten simple war lay against pattern slow
    center love person money serve appear road map rain rule pull cold notice voice unit
    power town fine fly fall lead cry dark machine note wait plan figure star box field rest
    correct able done drive stood contain front week final green quick develop warm free
    minute strong special mind clear tail produce fact street multiply nothing course stay
    wheel full force blue object surface deep moon foot system busy test record boat common
    gold possible plane stead dry ago ran check game shape hot miss heat snow bring yes fill
    east paint language among grand ball yet wave drop heart present heavy dance engine
    position arm wide material size vary weight general ice matter circle pair include
    divide felt perhaps pick count square reason length represent art subject region energy
    bed egg ride cell fraction forest sit race window store summer train sleep prove leg
    exercise wall
    """.split()
)

BLOCK_TOKENS = 512  # Mooncake's prefix-block size
_TAPE_WORDS = 1 << 16  # period of the shared word tape that bodies are cut from
_TAPE_SEED = 0x10AD6E4
_KEY_BITS = 64  # the leading words spell 64 bits of the key's hash
_WORD_RE = re.compile(r"\S+")


def _hash(seed: int, key: str) -> tuple[int, int]:
    digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def _join(a: str, b: str) -> str:
    return f"{a} {b}" if a and b else a or b


def load_tokenizer(path: str) -> Any:
    """A ``tokenizers.Tokenizer`` from a tokenizer.json file, with clear errors."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise WorkloadError(
            "workload.tokenizer needs the 'tokenizers' package: pip install tokenizers"
        ) from None
    if not os.path.isfile(path):
        raise WorkloadError(f"workload.tokenizer: no such file {path!r}; expected a tokenizer.json")
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # the Rust side raises plain Exceptions
        raise WorkloadError(f"workload.tokenizer: cannot load {path}: {exc}") from None


class Synthesizer:
    """Deterministic text of an exact length: whitespace words, or tokens of a configured tokenizer."""

    def __init__(self, seed: int = 0, tokenizer: Optional[str] = None) -> None:
        self.seed = seed
        self._tok = load_tokenizer(tokenizer) if tokenizer else None
        words, first = (WORDS, WORDS) if self._tok is None else self._single_token_words()
        self.words = np.array(words, dtype=object)
        self._word_tuple = tuple(words)
        self._first_words = tuple(first)  # choices for a text's first word (no space before it)
        self._first_index = np.array([self._word_tuple.index(w) for w in first], dtype=np.int64)
        self._key_words = math.ceil(_KEY_BITS / math.log2(len(words)))
        self._tape_idx = np.random.default_rng(_TAPE_SEED).integers(0, len(words), _TAPE_WORDS)
        self._tape = ""
        self._tape_view = memoryview(b"")
        self._starts = np.zeros(1, dtype=np.int64)  # char offset of each tape word (+1 past the end)
        self._starts_list: list[int] = [0]
        self.inexact = 0  # prompts whose token count the tokenizer could not make exact

    @property
    def unit(self) -> str:
        """What a length counts: "words" or "tokens"."""
        return "words" if self._tok is None else "tokens"

    def _single_token_words(self) -> tuple[list[str], list[str]]:
        """Built-in words that are one token after a space, and those also one token at the start."""
        tok = self._tok
        words = [w for w in WORDS if len(tok.encode(" " + w, add_special_tokens=False).ids) == 1]
        if len(words) < 16:
            raise WorkloadError(
                f"workload.tokenizer: only {len(words)} of the built-in words are single tokens; "
                "expected a tokenizer with an English vocabulary"
            )
        first = [w for w in words if len(tok.encode(w, add_special_tokens=False).ids) == 1]
        return words, first if len(first) >= 2 else words

    def count(self, text: str) -> int:
        """Length of ``text``: tokens of the configured tokenizer, else whitespace-separated words."""
        if self._tok is None:
            return len(text.split())
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def text(self, n: int, key: str) -> str:
        """Exactly ``n`` words determined by (seed, key); ``text(n, k)`` is a prefix of ``text(n + 1, k)``."""
        if n <= 0:
            return ""
        head, start = self._head(n, key)
        rest = n - len(head)
        if not rest:
            return " ".join(head)
        return " ".join(head) + " " + self._cut(start % _TAPE_WORDS, rest)

    def _head(self, n: int, key: str) -> tuple[list[str], int]:
        """The first min(n, key words) words, spelling the key's hash; and the body's tape offset."""
        spelled, start = _hash(self.seed, key)
        spelled, digit = divmod(spelled, len(self._first_words))
        head = [self._first_words[digit]]
        words, base = self._word_tuple, len(self._word_tuple)
        for _ in range(min(n, self._key_words) - 1):
            spelled, digit = divmod(spelled, base)
            head.append(words[digit])
        return head, start

    def texts(self, ns: Sequence[int], keys: Sequence[str]) -> pa.Array:
        """``text(n, key)`` for many rows at once, written straight into one Arrow string buffer."""
        count = len(ns)
        sizes = np.asarray(ns, dtype=np.int64).reshape(count)
        longest = int(sizes.max(initial=0))
        if longest + _TAPE_WORDS >= len(self._starts):
            self._grow(longest + _TAPE_WORDS)
        spelled = np.empty(count, dtype=np.uint64)
        offset = np.empty(count, dtype=np.int64)
        for i, key in enumerate(keys):
            a, b = _hash(self.seed, key)
            spelled[i], offset[i] = a, b % _TAPE_WORDS
        # The leading words spell the hash (as _head does), gathered from a padded byte table.
        heads = np.minimum(np.maximum(sizes, 0), self._key_words)
        digits = np.empty((count, self._key_words), dtype=np.int64)
        digits[:, 0] = self._first_index[(spelled % np.uint64(len(self._first_words))).astype(np.int64)]
        spelled //= np.uint64(len(self._first_words))
        for j in range(1, self._key_words):
            digits[:, j] = (spelled % np.uint64(len(self._word_tuple))).astype(np.int64)
            spelled //= np.uint64(len(self._word_tuple))
        table, lengths = self._word_bytes
        used = np.arange(self._key_words)[None, :] < heads[:, None]
        head_len = np.where(used, lengths[digits] + 1, 0).sum(axis=1)  # each word with its space
        cells = table[digits]  # (rows, words, width)
        valid = (np.arange(table.shape[1])[None, None, :] <= lengths[digits][:, :, None]) & used[:, :, None]
        head_bytes = memoryview(cells[valid].tobytes())
        head_end = np.cumsum(head_len).tolist()
        tape, starts = self._tape_view, self._starts_list
        rest = (sizes - heads).tolist()
        pieces: list[Any] = []
        out_len = np.zeros(count + 1, dtype=np.int64)
        lo = 0
        for i, (k, hi, at) in enumerate(zip(rest, head_end, offset.tolist())):
            if k > 0:
                body = tape[starts[at] : starts[at + k] - 1]
                pieces.append(head_bytes[lo:hi])
                pieces.append(body)
                out_len[i + 1] = hi - lo + len(body)
            elif hi > lo:
                pieces.append(head_bytes[lo : hi - 1])  # no body: drop the trailing space
                out_len[i + 1] = hi - lo - 1
            lo = hi
        data = b"".join(pieces)
        offsets = np.cumsum(out_len)
        kind = pa.large_string() if len(data) >= 2**31 else pa.string()
        offs = offsets if kind == pa.large_string() else offsets.astype(np.int32)
        return pa.Array.from_buffers(kind, count, [None, pa.py_buffer(offs), pa.py_buffer(data)])

    @functools.cached_property
    def _word_bytes(self) -> tuple[np.ndarray, np.ndarray]:
        """Each word's bytes followed by a space, padded to one width; and each word's length."""
        width = max(len(w) for w in self._word_tuple) + 1
        table = np.full((len(self._word_tuple), width), ord(" "), dtype=np.uint8)
        for i, w in enumerate(self._word_tuple):
            table[i, : len(w)] = np.frombuffer(w.encode(), dtype=np.uint8)
        return table, np.array([len(w) for w in self._word_tuple], dtype=np.int64)

    def _cut(self, start: int, k: int) -> str:
        if start + k >= len(self._starts):
            self._grow(start + k)
        return self._tape[self._starts[start] : self._starts[start + k] - 1]

    def _grow(self, words: int) -> None:
        size = max(words, 2 * (len(self._starts) - 1), _TAPE_WORDS + 4096)
        idx = np.resize(self._tape_idx, size)  # the tape repeats with period _TAPE_WORDS
        chosen = self.words[idx]
        self._tape = " ".join(chosen.tolist())
        self._tape_view = memoryview(self._tape.encode("ascii"))
        lengths = np.fromiter((len(w) + 1 for w in self.words), dtype=np.int64, count=len(self.words))
        self._starts = np.concatenate([[0], np.cumsum(lengths[idx])])
        self._starts_list = self._starts.tolist()

    def block(self, block_id: int, size: int = BLOCK_TOKENS) -> str:
        """The text of one shared prefix block: the same for the same id, byte for byte."""
        return self.text(size, f"block/{block_id}")

    def fit(self, n: int, fill: Callable[[int], str], prefix: str = "", prefix_words: Optional[int] = None) -> str:
        """``prefix`` (kept byte for byte) then ``fill(m)`` words, with m chosen so the whole counts ``n``.

        ``fill(m)`` must return m words and be a prefix of ``fill(m + 1)``; ``prefix_words``
        saves counting a long prefix. Exact in words by construction; with a tokenizer,
        adjusted a few times and counted in ``inexact`` when its merges make that impossible.
        """
        m = max(0, n - (len(prefix.split()) if prefix_words is None else prefix_words))
        text = _join(prefix, fill(m))
        if self._tok is None:
            return text
        best, best_err = text, None
        tried = set()
        for _ in range(8):
            err = self.count(text) - n
            if best_err is None or abs(err) < abs(best_err):
                best, best_err = text, err
            if err == 0:
                return text
            tried.add(m)
            m = max(0, m - err)
            if m in tried:
                break
            text = _join(prefix, fill(m))
        self.inexact += 1
        return best

    def prompt(self, n: int, key: str, prefix: str = "") -> str:
        """``prefix`` then text unique to ``key``, ``n`` tokens (words without a tokenizer) in all."""
        return self.fit(n, lambda m: self.text(m, key), prefix)

    def truncate(self, text: str, n: int) -> str:
        """The first ``n`` tokens (words) of real text, its formatting kept."""
        if n <= 0:
            return ""
        if self._tok is None:
            for i, match in enumerate(_WORD_RE.finditer(text)):
                if i == n - 1:
                    return text[: match.end()]
            return text
        enc = self._tok.encode(text, add_special_tokens=False)
        return text if len(enc.ids) <= n else text[: enc.offsets[n - 1][1]]


@functools.lru_cache(maxsize=8)
def _default(seed: int) -> Synthesizer:
    return Synthesizer(seed)


def synthesize(n_tokens: int, key: str = "", seed: int = 0) -> str:
    """Deterministic text of exactly ``n_tokens`` whitespace-separated words for ``key``."""
    return _default(seed).text(n_tokens, key)
