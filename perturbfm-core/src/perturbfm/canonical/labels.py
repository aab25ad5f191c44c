"""Splitting a perturbation label into the names of a combination.

A delimiter splits a label only where it stands outside brackets, so compound
names that contain the delimiter (``Drug(+)``, ``(+)-JQ1``, ``(+/-)-thalidomide``)
stay whole instead of becoming nonsense genes (``)``, ``Drug(``); empty names
(``C+`` is ``C``) are dropped. The same rule reads canonical labels
back (:func:`perturbfm.dataset.pert_genes`), so a label survives the round trip
``split -> canonical join -> split``; a name for which it cannot is refused at
import (see :func:`perturbfm.canonical.obs.canonical_labels`).

This module imports nothing from the package, so :mod:`perturbfm.dataset` can use it.
"""

from __future__ import annotations

_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {v: k for k, v in _OPEN.items()}


def split_combo(label: str, delim: str) -> list[str]:
    """The names of the combination ``label`` (stripped; at least one item).

    ``delim`` splits only at bracket depth 0; empty names are dropped; an unbalanced
    opening bracket keeps the rest of the label together.

    >>> split_combo("A+B", "+")
    ['A', 'B']
    >>> split_combo("Drug(+)+B", "+")
    ['Drug(+)', 'B']
    >>> split_combo("(+)-JQ1", "+")
    ['(+)-JQ1']
    """
    text = str(label)
    if not delim or delim not in text:
        return [text.strip()]
    pieces: list[str] = []
    stack: list[str] = []
    start = i = 0
    while i < len(text):
        ch = text[i]
        if ch in _OPEN:
            stack.append(ch)
        elif ch in _CLOSE and stack and stack[-1] == _CLOSE[ch]:
            stack.pop()
        elif not stack and text.startswith(delim, i):
            pieces.append(text[start:i])
            i += len(delim)
            start = i
            continue
        i += 1
    pieces.append(text[start:])
    out = [p.strip() for p in pieces if p.strip()]  # empty sides ('C+', 'A++B') are dropped
    return out or [text.strip()]


def balanced(name: str) -> bool:
    """Whether every bracket of ``name`` is closed in order."""
    stack: list[str] = []
    for ch in name:
        if ch in _OPEN:
            stack.append(ch)
        elif ch in _CLOSE:
            if not stack or stack[-1] != _CLOSE[ch]:
                return False
            stack.pop()
    return not stack
