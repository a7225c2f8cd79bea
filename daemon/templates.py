"""Error texts grouped into templates as they arrive, in the spirit of Drain (He et al., ICWS 2017).

A message is masked first (URLs, e-mail addresses, UUIDs, IPs, paths, hex ids, durations,
numbers and multi-word quoted strings become `<*>`), then split on whitespace. Messages meet
their candidates in a fixed-depth tree keyed by token count and the first tokens (a token
holding a digit or a mask goes down the `<*>` branch, so a variable first word cannot scatter
one template over many leaves); within a leaf the most similar cluster wins if enough of its
constant tokens agree, and the positions that differ become `<*>`. An exact-text cache in front
answers repeats without the tree: most errors in a stream are repeats.

One configuration serves every stream (bench/templates.py measures it on Loghub-2k): nothing
here is tuned for one kind of log.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

WILDCARD = "<*>"

# Masks applied token by token (none of these shapes holds a space). Order matters: the wider
# shapes first, so a URL is not cut into a path and numbers. The shapes that need a digit are
# tried only on tokens holding one; the others only on tokens holding their marker character.
_MARKED = (
    r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+",  # URLs
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail addresses
    r"(?<![\w/.])(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?",  # paths of two or more parts
    r"\"(?=[^\"]*[^A-Za-z\"])[^\"]+\"|'(?=[^']*[^A-Za-z'])[^']+'",  # quoted, not one plain word
)
_NUMERIC = (
    r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b",  # UUIDs
    r"\b\d{4}-\d{2}-\d{2}(?:T[\d:.]+)?(?:Z|[+-]\d{2}:?\d{2})?",  # ISO dates
    r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?(?![\w.])",  # IPv4[:port]
    r"\b(?:[0-9a-fA-F]{1,4}:){3,7}[0-9a-fA-F]{1,4}\b",  # IPv6 (full form)
    r"\b[a-zA-Z][\w-]*(?:\.[\w-]+)+:\d+\b",  # host:port
    r"\b0[xX][0-9a-fA-F]+\b",  # 0x hex
    r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b",  # hex ids, hashes
    r"\b\d+(?:\.\d+)?(?:ms|us|µs|ns|s|m|h|d|sec|secs|min|mins)\b",  # durations
    r"\b\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?\b",  # clock times
    r"(?<![a-zA-Z])[-+]?\d+(?:\.\d+)*",  # numbers, also inside words: blk_-42, task_7
)
_MARKED_MASK = re.compile("|".join(f"(?:{m})" for m in _MARKED + _NUMERIC))
_NUMERIC_MASK = re.compile("|".join(f"(?:{m})" for m in _NUMERIC))
_MARKERS = re.compile(r"[/@\"']")
_HAS_DIGIT = re.compile(r"\d")
# Words that belong to the `<*>` before them: units of sizes, and the parts of a spelt date
# ("Sun Jul 24 02:38:22 2005", "Jul 24").
_UNITS = frozenset(["B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB", "bytes"])
_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_DATE_WORDS = frozenset([*_DAYS, *_MONTHS])
# A word: letters (maybe joined by - or _), maybe quoted or bracketed. Two messages that differ
# in a word at the same place are different templates; only other tokens become `<*>`.
_NAME = r"[A-Za-z]+(?:[-_.][A-Za-z]+)*[0-9]*"
_WORD = re.compile(rf"[\"'(\[]?(?:{_NAME}[:=])?{_NAME}[\"')\]]?[.,:;]?$")

SIMILARITY = 0.5  # share of a cluster's constant tokens a message must repeat to join it
DEPTH = 2  # leading tokens that route a message, after its token count
MAX_CHILDREN = 100  # per tree node; more distinct leading words go down the `<*>` branch
VARIANTS = 5  # different words at one place that make it a variable
CACHE_SIZE = 100_000  # masked texts remembered with their cluster


def mask_token(token: str) -> str:
    if token.isalpha():
        return token
    if _MARKERS.search(token):
        return _MARKED_MASK.sub(WILDCARD, token)
    if _HAS_DIGIT.search(token):
        return _NUMERIC_MASK.sub(WILDCARD, token)
    return token


def mask_tokens(text: str, cache: dict[str, str] | None = None) -> list[str]:
    """The text's tokens with their variable parts replaced by `<*>`; `cache` remembers each
    token's masked form (tokens repeat far more often than whole texts)."""
    if cache is None:
        cache = {}
    out: list[str] = []
    for token in text.split():
        masked = cache.get(token)
        if masked is None:
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            masked = cache[token] = mask_token(token)
        out.append(masked)
    _absorb_units_and_dates(out)
    return out


def _absorb_units_and_dates(out: list[str]) -> None:
    for i in range(1, len(out)):
        if out[i - 1] == WILDCARD:
            unit = out[i].rstrip(",.;:)]")
            if unit in _UNITS:
                out[i] = WILDCARD + out[i][len(unit) :]
    for i, token in enumerate(out):
        if token in _DATE_WORDS and WILDCARD in out[i + 1 : i + 2]:
            out[i] = WILDCARD
            if i and out[i - 1] in _DATE_WORDS:
                out[i - 1] = WILDCARD


def mask(text: str) -> str:
    """The text with its variable parts replaced by `<*>` (and its spaces made single)."""
    return " ".join(mask_tokens(text))


@dataclass(eq=False)
class Cluster:
    """One template: its tokens (`<*>` where members differ) and how many messages joined it."""

    id: int
    template_tokens: list[str]
    count: int = 0
    merged_into: Cluster | None = field(default=None, repr=False)

    @property
    def template(self) -> str:
        return " ".join(self.template_tokens)

    @property
    def key(self) -> str:
        """A stable name for the template text (the id changes between miners; this does not)."""
        return template_key(self.template)

    def current(self) -> Cluster:
        cluster = self
        while cluster.merged_into is not None:
            cluster = cluster.merged_into
        return cluster


def template_key(template: str) -> str:
    return hashlib.blake2b(template.encode(), digest_size=8).hexdigest()


class Miner:
    """Online template miner: `add(text)` puts a message into its cluster and returns it."""

    def __init__(self, similarity: float = SIMILARITY, depth: int = DEPTH):
        self.similarity = similarity
        self.depth = depth
        self.clusters: list[Cluster] = []
        self._tree: dict = {}
        self._cache: dict[str, Cluster] = {}
        self._tokens: dict[str, str] = {}
        self._words: dict[str, bool] = {}
        self._families: dict[tuple[str, ...], list[Cluster]] = {}
        self._merged: list[Cluster] = []

    def add(self, text: str, count: int = 1) -> Cluster:
        parts = mask_tokens(text, self._tokens)
        masked = " ".join(parts)
        cluster = self._cache.get(masked)
        if cluster is None:
            cluster = self._place(parts)
            if len(self._cache) >= CACHE_SIZE:
                self._cache.clear()
            self._cache[masked] = cluster
        cluster = cluster.current()
        cluster.count += count
        return cluster

    def restore(self, template: str, count: int) -> Cluster:
        """A template known from before (the store), so later messages join it."""
        parts = template.split()
        leaf = self._leaf(parts, create=True)
        cluster = Cluster(len(self.clusters) + 1, parts, count)
        self.clusters.append(cluster)
        leaf.append(cluster)
        return cluster

    def match(self, text: str) -> Cluster | None:
        """The cluster a message would join, without changing anything."""
        parts = mask_tokens(text, self._tokens)
        leaf = self._leaf(parts, create=False)
        return self._best(leaf, parts)[0] if leaf is not None else None

    def take_merges(self) -> list[Cluster]:
        """The clusters merged into another since the last call (`current()` says where)."""
        merged, self._merged = self._merged, []
        return merged

    def live(self) -> Iterator[Cluster]:
        return (c for c in self.clusters if c.merged_into is None)

    def _place(self, parts: list[str]) -> Cluster:
        leaf = self._leaf(parts, create=True)
        best, near = self._best(leaf, parts)
        if best is None:
            best = Cluster(len(self.clusters) + 1, parts)
            self.clusters.append(best)
            leaf.append(best)
            if near is not None:
                return self._sibling(leaf, best, *near)
            return best
        template = best.template_tokens
        if template != parts:
            best.template_tokens = [
                t if t == p else WILDCARD for t, p in zip(template, parts, strict=True)
            ]
        return best

    def _best(
        self, leaf: list[Cluster], parts: list[str]
    ) -> tuple[Cluster | None, tuple[Cluster, int] | None]:
        """The cluster the message joins, else the one it would have joined but for one word
        (and that word's position)."""
        best, best_score, near = None, (-1.0, -1), None
        n = len(parts)
        is_word = self._is_word
        for cluster in leaf:
            template = cluster.template_tokens
            same = constant = 0
            clash = -1
            for i, (t, p) in enumerate(zip(template, parts, strict=True)):
                if t == WILDCARD:
                    continue
                constant += 1
                if t == p:
                    same += 1
                elif is_word(t) and is_word(p):
                    if clash >= 0:
                        break
                    clash = i
            else:
                similarity = (same + (clash >= 0)) / constant if constant else 1.0
                if similarity < self.similarity:
                    continue
                if clash >= 0:
                    near = near or (cluster, clash)
                    continue
                score = (similarity, n - constant)
                if score > best_score:
                    best, best_score = cluster, score
        return best, near

    def _sibling(self, leaf: list[Cluster], new: Cluster, near: Cluster, position: int) -> Cluster:
        """Clusters alike but for one word at one place are kept apart until that place has
        held VARIANTS different words: then it is a variable (a user name, not a state)."""
        shape = list(near.template_tokens)
        shape[position] = WILDCARD
        family = self._families.setdefault(tuple(shape), [])
        if not family:
            family.append(near)
        family.append(new)
        live = [c for c in family if c.merged_into is None]
        if len(live) < VARIANTS:
            return new
        target = max(live, key=lambda c: c.count)
        for cluster in live:
            if cluster is target:
                continue
            pairs = zip(target.template_tokens, cluster.template_tokens, strict=True)
            target.template_tokens = [t if t == o else WILDCARD for t, o in pairs]
            target.count += cluster.count
            cluster.merged_into = target
            leaf.remove(cluster)
            self._merged.append(cluster)
        family[:] = [target]
        return target

    def _is_word(self, token: str) -> bool:
        word = self._words.get(token)
        if word is None:
            if len(self._words) >= CACHE_SIZE:
                self._words.clear()
            word = self._words[token] = _WORD.match(token) is not None
        return word

    def _leaf(self, parts: list[str], create: bool) -> list[Cluster] | None:
        node = self._tree.get(len(parts))
        if node is None:
            if not create:
                return None
            node = self._tree[len(parts)] = {}
        route = parts[: self.depth]
        for i, token in enumerate(route):
            last = i == len(route) - 1
            step = token if self._is_word(token) else WILDCARD
            child = node.get(step)
            if child is None and step != WILDCARD:
                if create and len(node) < MAX_CHILDREN:
                    child = node[step] = [] if last else {}
                else:
                    step, child = WILDCARD, node.get(WILDCARD)
            if child is None:
                if not create:
                    return None
                child = node[step] = [] if last else {}
            node = child
        if not route:
            leaf = node.get("")
            if leaf is None:
                leaf = node[""] = []
            return leaf
        return node


def mine(texts: Iterable[str]) -> tuple[Miner, list[Cluster]]:
    """Every text into a fresh miner; the clusters in input order (follow `current()` for the
    final one)."""
    miner = Miner()
    return miner, [miner.add(text) for text in texts]
