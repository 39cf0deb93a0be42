"""The signal signal: exact error strings, identifiers and signal names a report shares with a playbook.

A report's most specific evidence is often one exact string: `No space left on device`, `too
many open files`, `Insufficient nvidia.com/gpu`, `exceeded quota`, a reason such as `OOMKilled` or
`CrashLoopBackOff`, an alert name that contains a playbook's signal name (`KubeJobFailed` and
`JobFailed`). One sentence embedding blurs it, and BM25 over single stemmed words splits it into
common words (`space`, `left`, `many`, `open`) that other playbooks carry too.

Nothing here knows a playbook: the terms are read from each playbook's own text (name,
description, labels, content) and weighed by how rare they are in the catalog, so the same rule
works for catalogs and reports never seen:

* text is cut into segments (lines, sentences, clauses, code spans), each into words: letters and
  digits, CamelCase split into its parts (`CrashLoopBackOff` -> crash loop back off), lower case,
  a plural `s` dropped;
* a playbook's terms are the phrases of its name and label values and of the quoted or code spans
  of its description and content (PHRASE_MIN..PHRASE_MAX consecutive words of one segment,
  neither first nor last a stop word), and its identifiers anywhere (one token led by a letter and
  written as code: CamelCase, letters with digits, dotted, slashed or underscored names, upper-case
  acronyms), whole;
* each term weighs its idf in the catalog over the idf of a term only one playbook has (so in
  (0, 1]), times FIELD_WEIGHTS of the most telling field that carries it;
* a report's signal score for a playbook is the sum of the weights of the terms it shares with it,
  counting only the longest matches: a phrase inside a longer matched phrase adds nothing.

The score is an extra fused signal (`app/catalog/search.py`); the matched terms are its
explanation (`why.signals`).
"""

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

# Phrase lengths in words: one word alone is the text signal's business (BM25), unless written
# as an identifier.
PHRASE_MIN = 2
PHRASE_MAX = 4
# Where a term is found says how much it identifies the playbook: its name and signal labels are
# what it is about; its content also names what it is not ("if the reason is Error, this is not
# the right playbook"). Chosen on the tune half of ops/bench/data/incident_reports.yaml.
FIELD_WEIGHTS = {"name": 1.0, "labels": 1.0, "description": 1.0, "content": 0.5}
# Fields whose every phrase is a term; of the others, only identifiers and quoted spans count.
WHOLE_FIELDS = {"name", "labels"}
# Terms more playbooks share than this fraction of the catalog are no evidence for any of them.
MAX_DOCUMENT_FRACTION = 0.2

_STOP_WORDS = (
    "a about after again all also am an and any are as at be because been before being below between both but by "
    "can could did do does doing down during each few for from further had has have having he her here his how i "
    "if in into is it its itself just me more most my no nor not now of off on once only or other our out over own "
    "same she should so some such than that the their them then there these they this those through to too under "
    "until up very was we were what when where which while who why will with would you your"
)
STOP_WORDS = frozenset(_STOP_WORDS.split())
# "no" and "not" carry meaning inside a phrase (`no space left on device`, `not ready`), so they
# may start a phrase; they still cannot end one.
LEADING_ALLOWED = frozenset({"no", "not", "too"})

_SEGMENTS = re.compile(r"[\n`\"'()\[\]{}<>|;,!?]+|[.:=](?:\s|$)+|\s-+\s")
_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[._/-][A-Za-z0-9]+)*")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z0-9]+")
_IDENTIFIER = re.compile(r"[a-z][A-Z]|[A-Z]{2,}[a-z]|[A-Za-z][0-9]|[0-9][A-Za-z]|[._/]|^[A-Z]{3,}$")


def _word(part: str) -> str:
    word = part.lower()
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    return word


def analyse(text: str) -> tuple[list[list[str]], set[str]]:
    """The words of each segment of `text` and its identifiers (lower case, whole)."""
    segments: list[list[str]] = []
    identifiers: set[str] = set()
    for segment in _SEGMENTS.split(text):
        words: list[str] = []
        for token in _TOKEN.findall(segment):
            parts = [_word(part) for piece in re.split(r"[._/-]+", token) for part in _CAMEL.findall(piece)]
            if token[0].isalpha() and _IDENTIFIER.search(token):
                # Whole, as the phrase of its parts: `OOMKilled` and `OOM killed` are one term.
                identifiers.add(" ".join(parts))
            words.extend(parts)
        if words:
            segments.append(words)
    return segments, identifiers


def terms(text: str) -> set[str]:
    """The phrases and identifiers of `text` (see the module's docstring)."""
    segments, found = analyse(text)
    for words in segments:
        for start in range(len(words)):
            first = words[start]
            if first in STOP_WORDS and first not in LEADING_ALLOWED:
                continue
            for length in range(PHRASE_MIN, PHRASE_MAX + 1):
                end = start + length
                if end > len(words):
                    break
                if words[end - 1] not in STOP_WORDS and not words[end - 1].isdigit():
                    found.add(" ".join(words[start:end]))
    return found


_QUOTED = re.compile(r"`([^`\n]+)`|\"([^\"\n]+)\"|(?<![A-Za-z])'([^'\n]+)'(?![A-Za-z])")


def quoted(text: str) -> str:
    """The spans of `text` written as code or quoted, one a line: where prose names exact strings."""
    return "\n".join(next(group for group in m.groups() if group is not None) for m in _QUOTED.finditer(text))


def prose_terms(text: str) -> set[str]:
    """The terms of prose: its identifiers and the phrases of its quoted spans."""
    return analyse(text)[1] | terms(quoted(text))


@functools.lru_cache(maxsize=65536)
def field_terms(whole: bool, text: str) -> frozenset[str]:
    """The terms of one field's text, remembered: a reload after one playbook changed reads only
    that playbook's text again."""
    return frozenset(terms(text) if whole else prose_terms(text))


def playbook_fields(name: str, description: str, labels: Mapping[str, str], content: str) -> dict[str, str]:
    """The text of each field a playbook's terms come from; label values only (names such as
    `severity` are shared by every playbook)."""
    return {"name": name, "description": description, "labels": "\n".join(labels.values()), "content": content}


@dataclass(frozen=True)
class SignalScores:
    """The signal score of every indexed row for one query; the terms that made a row's score are
    read for the rows shown only (`matched_terms`)."""

    score: np.ndarray
    # The query's counted terms, longest first, each with the rows it counts for.
    counted: list[tuple[str, np.ndarray]]

    def matched_terms(self, row: int) -> list[str]:
        return [term for term, rows in self.counted if row in rows]


class SignalIndex:
    """Term weights of one catalog state: row n is the n-th playbook given."""

    def __init__(self, playbooks: Iterable[Mapping[str, str]]):
        weights: list[dict[str, float]] = []
        for fields in playbooks:
            row: dict[str, float] = {}
            for field, text in fields.items():
                weight = FIELD_WEIGHTS[field]
                for term in field_terms(field in WHOLE_FIELDS, text):
                    if weight > row.get(term, 0.0):
                        row[term] = weight
            weights.append(row)
        rows = len(weights)
        gathered: dict[str, tuple[list[int], list[float]]] = {}
        for n, row in enumerate(weights):
            for term, weight in row.items():
                entry = gathered.setdefault(term, ([], []))
                entry[0].append(n)
                entry[1].append(weight)
        idf_max = math.log(1 + (rows - 0.5) / 1.5) if rows else 1.0
        most = max(1.0, MAX_DOCUMENT_FRACTION * rows)
        self.rows = rows
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, (at, field_weights) in gathered.items():
            df = len(at)
            if df > most:
                continue
            idf = math.log(1 + (rows - df + 0.5) / (df + 0.5)) / idf_max
            self.postings[term] = (np.array(at, dtype=np.int64), idf * np.array(field_weights))

    def score(self, query: str) -> SignalScores:
        """Each row's sum of the weights of the query's terms it carries, longest matches only."""
        found = [term for term in terms(query) if term in self.postings]
        # Longest first: a term inside a longer one the same row matched adds nothing to that row.
        found.sort(key=lambda term: (-len(term), term))
        score = np.zeros(self.rows)
        counted: list[tuple[str, np.ndarray]] = []
        for term in found:
            at, weight = self.postings[term]
            covering = [rows for longer, rows in counted if _inside(term, longer)]
            if covering:
                keep = ~np.isin(at, np.concatenate(covering))
                at, weight = at[keep], weight[keep]
            if len(at):
                score[at] += weight  # a row appears once in a posting
                counted.append((term, at))
        return SignalScores(score, counted)


def _inside(term: str, longer: str) -> bool:
    return f" {term} " in f" {longer} "
