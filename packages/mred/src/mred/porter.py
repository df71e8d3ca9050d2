"""The Porter stemmer exactly as ``rouge-score`` uses it (NLTK's ``PorterStemmer()`` default mode).

``rouge-score`` stems with ``nltk.stem.porter.PorterStemmer()`` whose default mode is
``NLTK_EXTENSIONS``: Porter (1980) plus Martin Porter's later changes plus NLTK's own (an
irregular-forms pool, ``ies``/``ied`` on 4-letter words, ``y → i`` only after a consonant, the
``alli``, ``fulli`` and ``logi`` rules). This module re-implements that mode from the published
algorithm so that ROUGE needs neither nltk nor rouge-score; the tests compare it word by word
with nltk when nltk is installed.

One rule of thumb carried over faithfully: within a rule list the *first* suffix that matches
ends the step, whether or not its condition holds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

__all__ = ["stem"]

_VOWELS = frozenset("aeiou")
_IRREGULAR = {
    "skies": "sky",
    "sky": "sky",
    "dying": "die",
    "lying": "lie",
    "tying": "tie",
    "news": "news",
    "innings": "inning",
    "inning": "inning",
    "outings": "outing",
    "outing": "outing",
    "cannings": "canning",
    "canning": "canning",
    "howe": "howe",
    "proceed": "proceed",
    "exceed": "exceed",
    "succeed": "succeed",
}

Condition = Callable[[str], bool] | None


def _consonant_flags(word: str) -> list[bool]:
    """True at consonants: not a vowel, and 'y' only when not after a consonant."""
    flags: list[bool] = []
    for i, char in enumerate(word):
        if char in _VOWELS:
            flags.append(False)
        elif char == "y":
            flags.append(True if i == 0 else not flags[i - 1])
        else:
            flags.append(True)
    return flags


def _is_consonant(word: str, i: int) -> bool:
    return _consonant_flags(word[: i + 1])[i]


def _measure(stem: str) -> int:
    """m in ``[C](VC){m}[V]``."""
    pattern = "".join("c" if c else "v" for c in _consonant_flags(stem))
    return pattern.count("vc")


def _positive(stem: str) -> bool:
    return _measure(stem) > 0


def _contains_vowel(stem: str) -> bool:
    return not all(_consonant_flags(stem))


def _ends_double_consonant(word: str) -> bool:
    return len(word) >= 2 and word[-1] == word[-2] and _is_consonant(word, len(word) - 1)


def _ends_cvc(word: str) -> bool:
    if len(word) >= 3:
        flags = _consonant_flags(word)
        if flags[-3] and not flags[-2] and flags[-1] and word[-1] not in "wxy":
            return True
    if len(word) == 2:  # NLTK extension: a vowel then a consonant
        flags = _consonant_flags(word)
        return not flags[0] and flags[1]
    return False


def _apply_rules(word: str, rules: list[tuple[str, str, Condition]]) -> str:
    for suffix, replacement, condition in rules:
        if suffix == "*d" and _ends_double_consonant(word):
            stem = word[:-2]
            return stem + replacement if condition is None or condition(stem) else word
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + replacement if condition is None or condition(stem) else word
    return word


def _step1a(word: str) -> str:
    if word.endswith("ies") and len(word) == 4:
        return word[:-3] + "ie"
    return _apply_rules(
        word, [("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)]
    )


def _step1b(word: str) -> str:
    if word.endswith("ied"):
        return word[:-3] + ("ie" if len(word) == 4 else "i")
    if word.endswith("eed"):
        stem = word[:-3]
        return stem + "ee" if _measure(stem) > 0 else word
    for suffix in ("ed", "ing"):
        if word.endswith(suffix):
            intermediate = word[: len(word) - len(suffix)]
            if _contains_vowel(intermediate):
                break
    else:
        return word
    last = intermediate[-1] if intermediate else ""
    return _apply_rules(
        intermediate,
        [
            ("at", "ate", None),
            ("bl", "ble", None),
            ("iz", "ize", None),
            ("*d", last, lambda stem: last not in ("l", "s", "z")),
            ("", "e", lambda stem: _measure(stem) == 1 and _ends_cvc(stem)),
        ],
    )


def _step1c(word: str) -> str:
    return _apply_rules(
        word, [("y", "i", lambda stem: len(stem) > 1 and _is_consonant(stem, len(stem) - 1))]
    )


_STEP2 = [
    ("ational", "ate"),
    ("tional", "tion"),
    ("enci", "ence"),
    ("anci", "ance"),
    ("izer", "ize"),
    ("bli", "ble"),
    ("alli", "al"),
    ("entli", "ent"),
    ("eli", "e"),
    ("ousli", "ous"),
    ("ization", "ize"),
    ("ation", "ate"),
    ("ator", "ate"),
    ("alism", "al"),
    ("iveness", "ive"),
    ("fulness", "ful"),
    ("ousness", "ous"),
    ("aliti", "al"),
    ("iviti", "ive"),
    ("biliti", "ble"),
    ("fulli", "ful"),
]


def _step2(word: str) -> str:
    if word.endswith("alli") and _positive(word[:-4]):
        return _step2(word[:-4] + "al")
    rules: list[tuple[str, str, Condition]] = [(s, r, _positive) for s, r in _STEP2]
    rules.append(("logi", "log", lambda stem: _positive(word[:-3])))
    return _apply_rules(word, rules)


def _step3(word: str) -> str:
    return _apply_rules(
        word,
        [
            ("icate", "ic", _positive),
            ("ative", "", _positive),
            ("alize", "al", _positive),
            ("iciti", "ic", _positive),
            ("ical", "ic", _positive),
            ("ful", "", _positive),
            ("ness", "", _positive),
        ],
    )


def _gt1(stem: str) -> bool:
    return _measure(stem) > 1


_STEP4 = ["al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent"]
_STEP4_TAIL = ["ou", "ism", "ate", "iti", "ous", "ive", "ize"]


def _step4(word: str) -> str:
    rules: list[tuple[str, str, Condition]] = [(s, "", _gt1) for s in _STEP4]
    rules.append(("ion", "", lambda stem: _measure(stem) > 1 and stem[-1:] in ("s", "t")))
    rules += [(s, "", _gt1) for s in _STEP4_TAIL]
    return _apply_rules(word, rules)


def _step5a(word: str) -> str:
    if word.endswith("e"):
        stem = word[:-1]
        measure = _measure(stem)
        if measure > 1 or (measure == 1 and not _ends_cvc(stem)):
            return stem
    return word


def _step5b(word: str) -> str:
    return _apply_rules(word, [("ll", "l", lambda stem: _measure(word[:-1]) > 1)])


@lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """The Porter stem of ``word`` (lower-cased first), as NLTK's default mode computes it."""
    lowered = word.lower()
    if lowered in _IRREGULAR:
        return _IRREGULAR[lowered]
    if len(word) <= 2:
        return lowered
    result = _step1a(lowered)
    result = _step1b(result)
    result = _step1c(result)
    result = _step2(result)
    result = _step3(result)
    result = _step4(result)
    result = _step5a(result)
    result = _step5b(result)
    return result
