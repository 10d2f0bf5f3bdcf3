"""Text matching over Arrow columns with exactly Python `re`'s answers, without a regex call per row.

Two tools for the text_filter stage:

- `re2_form(pattern)`: an RE2 pattern (Arrow's regex engine, run in C++ over a whole column)
  that matches a non-empty ASCII string exactly when the Python pattern does. RE2 and Python
  differ elsewhere (Unicode `\\b` and case folding, `\\s`, `$`, `\\B` on an empty string,
  lookarounds), so each single-character construct is rewritten as the explicit set of ASCII
  characters Python's own `re` says it matches, and patterns RE2 cannot express give None.
  Callers ask Python for the other rows (non-ASCII or empty).
- `WordMatcher`: the first whole-word match of a word list in each row, as Python's
  `\\b(w1|w2|...)\\b` search (words longest first) finds it, by one Aho-Corasick pass over the
  batch.
"""

from __future__ import annotations

import re
from functools import cache
from re import _constants as C  # the parse tree's opcodes (Python 3.11+)
from re import _parser

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_SCOPED = re.IGNORECASE | re.DOTALL | re.ASCII  # the flags that change which character a construct matches
_CATEGORIES = {C.CATEGORY_DIGIT: r"\d", C.CATEGORY_NOT_DIGIT: r"\D", C.CATEGORY_SPACE: r"\s",
               C.CATEGORY_NOT_SPACE: r"\S", C.CATEGORY_WORD: r"\w", C.CATEGORY_NOT_WORD: r"\W"}
_RE2_REPEAT_LIMIT = 1000
_NEVER = r"\b\B"  # matches nowhere: a construct that matches no ASCII character
_SEPARATOR = "\x00"


class _Unsupported(Exception):
    """A construct without an RE2 form of the same meaning."""


def re2_form(pattern: re.Pattern) -> str | None:
    """An RE2 pattern that finds a match in a non-empty ASCII string exactly when `pattern.search`
    does (the matched text may differ), or None where there is none RE2 accepts."""
    if not isinstance(pattern.pattern, str):
        return None
    try:
        form = _sequence(_parser.parse(pattern.pattern, pattern.flags), pattern.flags, tail=True)
    except _Unsupported:
        return None
    try:  # RE2's own limits (repetition sizes, program size)
        pc.match_substring_regex(pa.array([""]), form)
    except pa.ArrowInvalid:
        return None
    return form


def _sequence(items, flags: int, tail: bool) -> str:
    """`tail`: the sequence ends the whole pattern (nothing must match after it)."""
    last = len(items) - 1
    return "".join(_item(op, av, flags, tail and i == last) for i, (op, av) in enumerate(items))


def _item(op, av, flags: int, tail: bool) -> str:
    if op is C.LITERAL:
        return _chars(f"\\U{av:08x}", flags)
    if op is C.NOT_LITERAL:
        return _chars(f"[^\\U{av:08x}]", flags)
    if op is C.ANY:
        return _chars(".", flags)
    if op is C.IN:
        return _chars(_charset(av), flags)
    if op is C.SUBPATTERN:
        _, add, remove, items = av
        return f"(?:{_sequence(items, (flags | add) & ~remove, tail)})"
    if op is C.BRANCH:
        return "(?:" + "|".join(_sequence(items, flags, tail) for items in av[1]) + ")"
    if op in (C.MAX_REPEAT, C.MIN_REPEAT):
        low, high, items = av
        if low > _RE2_REPEAT_LIMIT or (high is not C.MAXREPEAT and high > _RE2_REPEAT_LIMIT):
            raise _Unsupported
        bounds = f"{{{low},}}" if high is C.MAXREPEAT else f"{{{low},{high}}}"
        return f"(?:{_sequence(items, flags, False)}){bounds}" + ("?" if op is C.MIN_REPEAT else "")
    if op is C.AT:
        return _position(av, flags, tail)
    raise _Unsupported(op)  # back references, lookarounds, atomic groups, possessive repeats


def _position(at, flags: int, tail: bool) -> str:
    multiline = bool(flags & re.MULTILINE)
    if at is C.AT_BEGINNING:
        return "(?m:^)" if multiline else r"\A"
    if at is C.AT_BEGINNING_STRING:
        return r"\A"
    if at is C.AT_END and multiline:
        return "(?m:$)"
    if at is C.AT_END and tail:  # Python's `$`: the end, or before a final newline; as the pattern's last
        return r"(?:\n?\z)"       # item it may consume that newline without changing whether a match exists
    if at is C.AT_END_STRING:
        return r"\z"
    if at is C.AT_BOUNDARY:
        return r"\b"  # the same on ASCII text: word characters are [0-9A-Za-z_] for both
    if at is C.AT_NON_BOUNDARY:
        return r"\B"  # (differs on the empty string only, which callers ask Python about)
    raise _Unsupported(at)


def _charset(items) -> str:
    """A Python character class spelling the parsed class `items`."""
    parts = []
    for op, av in items:
        if op is C.NEGATE:
            parts.append("^")
        elif op is C.LITERAL:
            parts.append(f"\\U{av:08x}")
        elif op is C.RANGE:
            parts.append(f"\\U{av[0]:08x}-\\U{av[1]:08x}")
        elif op is C.CATEGORY and av in _CATEGORIES:
            parts.append(_CATEGORIES[av])
        else:
            raise _Unsupported(op)
    return "[" + "".join(parts) + "]"


def _chars(python: str, flags: int) -> str:
    """The RE2 class of the ASCII characters that the one-character Python pattern `python` matches."""
    return _ascii_class(python, flags & _SCOPED)


@cache
def _ascii_class(python: str, flags: int) -> str:
    matcher = re.compile(python, flags)
    codes = [c for c in range(128) if matcher.fullmatch(chr(c))]
    if not codes:
        return _NEVER
    if len(codes) == 1:
        return f"\\x{{{codes[0]:02x}}}"
    runs, start = [], codes[0]
    for prev, code in zip(codes, codes[1:] + [None]):
        if code != prev + 1:
            runs.append(f"\\x{{{start:02x}}}" + (f"-\\x{{{prev:02x}}}" if prev > start else ""))
            start = code
    return "[" + "".join(runs) + "]"


# The non-ASCII characters Python's case-insensitive `re` takes for an ASCII letter: dotted and
# dotless I, the long s and the Kelvin sign (a test checks this against `re` over every code point).
ASCII_TWINS = {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}


class WordMatcher:
    """The first match of Python's `re.compile(r"\\b(" + "|".join(words, longest first) + r")\\b", flags)`
    in each row of a string column: at the leftmost start where a word matches between word
    boundaries, the longest such word. Only for non-empty ASCII words (`usable` tells)."""

    def __init__(self, words: list[str], ignore_case: bool):
        self.ignore_case = ignore_case
        self.usable = bool(words) and all(w and w.isascii() and _SEPARATOR not in w for w in words)
        if not self.usable:
            return
        import ahocorasick

        self._automaton = ahocorasick.Automaton()
        for word in words:
            self._automaton.add_word(word.lower() if ignore_case else word, len(word))
        self._automaton.make_automaton()

    def first_matches(self, texts: pa.Array) -> np.ndarray:
        """Per row of `texts` (a string array without nulls), the matched text, or None."""
        found = np.full(len(texts), None, dtype=object)
        if not len(texts):
            return found
        text = _SEPARATOR.join(texts.to_pylist())  # a word holds no separator, so no match spans two rows
        keys = text
        if self.ignore_case:  # position for position: ASCII letters lowered (bytes.lower leaves UTF-8's other bytes)
            keys = text.encode("utf-8").lower().decode("utf-8")
            for twin, letter in ASCII_TWINS.items():
                if twin in keys:
                    keys = keys.replace(twin, letter)
        row_starts = np.cumsum(np.r_[0, pc.utf8_length(texts).to_numpy(zero_copy_only=False)[:-1] + 1])
        best: dict[int, tuple[int, int]] = {}
        for end, length in self._automaton.iter(keys):
            start = end - length + 1
            if _boundary(text, start) and _boundary(text, end + 1):
                row = int(np.searchsorted(row_starts, start, side="right")) - 1
                if row not in best or (start, -length) < best[row]:
                    best[row] = (start, -length)
        for row, (start, minus_length) in best.items():
            found[row] = text[start : start - minus_length]
        return found


def _boundary(text: str, at: int) -> bool:
    """Python's `\\b` at `at`: a word character on one side only (the separator is not one)."""
    before = at > 0 and _is_word(text[at - 1])
    return before != (at < len(text) and _is_word(text[at]))


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"
