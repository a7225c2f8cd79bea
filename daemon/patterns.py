r"""What a rule's regex means, and how it is matched without ever stalling the daemon.

Rules are written in Python's `re` syntax and mean what `re` says. But `re` cannot be
stopped once it has started, and a pattern such as `^(\w+\s?)*$` backtracks for ever
on a forty-character message. The `regex` package reads the same syntax and can stop at
a deadline. So `re` validates each rule (its errors carry the positions people see)
and `regex` matches it, under a time budget, through a `Matcher`.

Where `regex` reads `re`'s syntax differently, the source is rewritten first so that
both read it alike: a `[` inside a set is a literal to `re` but may open a POSIX class
(`[[:alpha:]]`) to `regex`; a `{` that does not start a repeat is a literal to `re` but
may start fuzzy matching (`{e<=1}`) in `regex`; `\B` never matches an empty text in
`re`. The rewrite only escapes what `re` already takes literally, and `re`'s own parser
confirms that the rewritten pattern means the same to it. One difference cannot be
rewritten away (`regex` drops a scoped `(?a:...)` flag inside a nested group): such a
pattern is refused with the fix.

The time limit costs two clock reads (system calls) a match, more than most matches:
`untimed_length` says up to what text length a pattern's worst case is provably short
(under `WORK_MAX` backtracking steps, from its parse tree), and there it runs without.

The classifier's prefilter, RE2, is linear-time but reads less syntax: `Prefilter`
widens each rule for it and says why RE2 cannot read one (such a rule is confirmed by
Python alone). RE2 is optional (`pipewarden[re2]`): without google-re2, or with
PIPEWARDEN_RULES_ENGINE=python, every rule is a candidate and Python confirms each in
turn — the same answers, more slowly. `Matcher.repeats_a_repeat` flags the shape of
catastrophic backtracking.
"""

from __future__ import annotations

import functools
import os
import re
import re._compiler
import re._constants as sre
import re._parser
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import regex

ENGINE_VARIABLE = "PIPEWARDEN_RULES_ENGINE"  # "python": no RE2 prefilter, even if installed
MATCH_BUDGET_S = 0.025  # one rule on one message; past it the rule counts as no match
WORK_MAX = 1_000_000  # backtracking steps a match may take without the timer (ms at worst)

# Python regex syntax RE2 does not have (or reads differently): such rules skip RE2.
PYTHON_ONLY = re.compile(r"\(\?(?:[=!]|<[=!]|P=|\(|>)|\\[1-9uUN]|\\Z|[*+?}]\+|\{,")
# Shorthand classes whose RE2 meaning is narrower (ASCII) than Python's (Unicode).
_SHORTHAND = re.compile(r"\\[dwsDWS]|\\[bB]")
_SPECIAL = re.compile(r"[\\.^$*+?{}\[\]|()]")  # without any, a pattern is plain text
_REPEAT = re.compile(r"\{(?:\d+(?:,\d*)?|,\d*)\}")  # what `re` reads as {m}, {m,}, {,n}, {m,n}
# `re`'s \B, which never holds on an empty text. Not in a group: `regex` drops a scoped
# (?a:...) flag inside a nested group, and \B cannot be repeated, so none is needed.
_NOT_BOUNDARY = r"(?!\A\Z)\B"
_BACKTRACKING_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT)
_ONE_WAY = (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN, sre.AT)  # match one way, or fail
_BACKREFERENCES = (sre.GROUPREF, sre.GROUPREF_IGNORE, sre.GROUPREF_LOC_IGNORE,
                   sre.GROUPREF_UNI_IGNORE)  # fmt: skip
_SAME_BITS = re.IGNORECASE | re.MULTILINE | re.DOTALL | re.VERBOSE  # re.ASCII is not


class Matcher:
    """A rule's regex as `re` reads it, searched by `regex` (compiled at its first use).

    `search` raises TimeoutError when the text takes longer than `timeout` seconds.
    """

    __slots__ = ("_compiled", "_flags", "_source", "_untimed", "repeats_a_repeat")

    def __init__(self, source: str, flags: int, repeats: bool):
        self._source = source  # rewritten for `regex` (see `_rewrite`)
        self._flags = flags
        self._compiled: Any = None
        self._untimed = -2  # not yet known
        self.repeats_a_repeat = repeats  # like (a+)+: may backtrack for ever

    def search(self, text: str, timeout: float) -> bool:
        compiled = self._compiled or self._compile()
        if len(text) <= self._untimed:  # provably quick: the timer would cost more
            return compiled.search(text) is not None
        return compiled.search(text, timeout=timeout) is not None

    def _compile(self) -> Any:
        try:
            self._compiled = regex.compile(self._source, _regex_flags(self._flags) | regex.V0)
        except (regex.error, OverflowError, RecursionError) as exc:
            raise ValueError(f"the time-limited matcher cannot read it: {exc}") from None
        self._untimed = untimed_length(self._source, self._flags)
        return self._compiled


def compile_rule(source: str, flags: int = re.IGNORECASE) -> Matcher:
    """Check `source` as `re` does and make its Matcher.

    Raises what `re.compile` raises for a bad pattern (re.error with its position,
    OverflowError, RecursionError), and ValueError(problem, fix) for one the
    time-limited matcher cannot be made to read as `re` does.
    """
    flags = int(flags)  # re's internals test bits of a plain int far faster than of a RegexFlag
    if not _SPECIAL.search(source):  # plain text (most rules): valid, and read alike by both
        return Matcher(source, flags, repeats=False)
    tree = re._parser.parse(source, flags)
    if "(?<" in source:  # the checks `re` leaves to its compiler are all of look-behinds
        re._compiler.compile(tree, flags)
    if "(?" in source and _has(tree, _scoped_ascii):
        raise ValueError(
            "a scoped ASCII flag (?a:...) is read differently by the time-limited matcher",
            "put (?a) at the start to make the whole pattern ASCII",
        )
    escaped, for_regex = _rewrite(source, bool(tree.state.flags & re.VERBOSE))
    if escaped != source and repr(_tree(escaped, flags)) != repr(tree):
        raise ValueError("the time-limited matcher cannot read it as Python does", "")
    return Matcher(for_regex, flags, _nested(tree, inside_repeat=False))


def _regex_flags(flags: int) -> int:
    return (flags & _SAME_BITS) | (regex.ASCII if flags & re.ASCII else 0)


def _tree(source: str, flags: int) -> Any:
    """`re`'s parse of the pattern (None if it does not parse)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "possible set intersection": re reads on
        try:
            return re._parser.parse(source, int(flags))
        except (re.error, RecursionError, OverflowError):
            return None


def _scoped_ascii(op: Any, argument: Any) -> bool:
    return op is sre.SUBPATTERN and bool(argument[1] & re.ASCII)


def _rewrite(source: str, verbose: bool) -> tuple[str, str]:
    """(source with `re`'s literal `[` and `{` escaped, the same for `regex`)."""
    if not any(char in source for char in "[{#") and "\\B" not in source:
        return source, source  # the common case: nothing to rewrite
    pieces: list[str] = []
    i, n = 0, len(source)
    in_set, set_start = False, 0
    while i < n:
        char = source[i]
        if char == "\\":
            end = i + 2
            if source.startswith("N{", i + 1):  # \N{NAME}: one escape, braces included
                end = (source.find("}", i) + 1) or n
            pieces.append(source[i:end])
            i = end
        elif in_set:
            if char == "]" and i > set_start:  # a `]` first in a set is a literal
                in_set = False
            pieces.append("\\[" if char == "[" else char)
            i += 1
        elif char == "[":
            end = i + 2 if source.startswith("^", i + 1) else i + 1
            in_set, set_start = True, end
            pieces.append(source[i:end])
            i = end
        elif char == "{" and not _REPEAT.match(source, i):
            pieces.append("\\{")
            i += 1
        elif char == "#" and verbose:  # a comment, to the end of its line
            end = source.find("\n", i)
            end = n if end < 0 else end
            pieces.append(source[i:end])
            i = end
        else:
            pieces.append(char)
            i += 1
    escaped = "".join(pieces)
    return escaped, "".join(_NOT_BOUNDARY if p == "\\B" else p for p in pieces)


def relaxed(source: str) -> str:
    """The rule widened for RE2: it may match more than Python would, never less."""
    return _SHORTHAND.sub(lambda m: "" if m.group()[1] in "bB" else r"\p{Any}", source)


class Prefilter:
    """Which of many patterns may match a text, from one linear RE2 pass per chunk of them.

    Each pattern goes in relaxed (it may report too much, never too little). A pattern
    in syntax RE2 lacks, or that RE2 refuses (`refused` says why), is always a
    candidate: Python confirms it on every text. So is every pattern when the text is
    one RE2 cannot take (a lone surrogate). Never raises for a pattern or a text.

    Without RE2, a pattern is a candidate for a text that holds one of the plain ASCII
    texts every match of it holds (`required_text`), compared without case, and for every
    text that is not ASCII (where `re`'s case folding goes past ASCII's).
    """

    CHUNK = 1000  # patterns per RE2 set: bounds each set's memory

    def __init__(self, sources: list[str]):
        self.size = len(sources)
        self.refused: dict[int, str] = {}  # index -> why RE2 cannot read that pattern
        self._sets: list[tuple[list[int], Any]] = []
        self._whole: Any = None
        self._required: list[tuple[int, tuple[str, ...]]] | None = None  # without RE2
        re2 = re2_module()
        if re2 is None:
            self._always = list(range(self.size))
            self._required = [(n, required_text(source)) for n, source in enumerate(sources)]
            return
        always = [n for n, source in enumerate(sources) if PYTHON_ONLY.search(source)]
        indexed = [n for n in range(len(sources)) if n not in set(always)]
        options = _re2_options(re2)
        for start in range(0, len(indexed), self.CHUNK):
            chunk, members = re2.Set.SearchSet(options), []
            for n in indexed[start : start + self.CHUNK]:
                try:
                    chunk.Add(relaxed(sources[n]))
                    members.append(n)
                except re2.error:
                    self.refused[n] = _re2_reason(re2, relaxed(sources[n]), options)
            try:
                chunk.Compile()
            except re2.error:  # past RE2's memory budget: Python confirms these instead
                always.extend(members)
                continue
            if members:
                self._sets.append((members, chunk))
        self._always = sorted([*always, *self.refused])
        whole = len(self._sets) == 1 and not self._always  # one set, indexes as given
        self._whole = self._sets[0][1] if whole else None

    def candidates(self, text: str) -> Iterable[int]:
        """Indexes of the patterns that may match `text`, in order."""
        if self._required is not None:
            return self._python_candidates(text)
        try:
            if self._whole is not None:  # the common case, kept short: it runs per failure
                hits = self._whole.Match(text)
                return sorted(hits) if hits else []
            hits = [members[i] for members, chunk in self._sets for i in chunk.Match(text) or ()]
        except UnicodeEncodeError:  # RE2 takes UTF-8; a lone surrogate is not
            return list(range(self.size))
        return sorted(hits + self._always) if hits else self._always

    def _python_candidates(self, text: str) -> Iterator[int]:
        """Without RE2: one at a time, as the caller stops at the first that matches."""
        if not text.isascii():
            yield from self._always
            return
        folded = text.lower()
        for n, texts in self._required or ():
            if not texts:
                yield n
                continue
            for required in texts:
                if required in folded:
                    yield n
                    break


def required_text(source: str, flags: int = re.IGNORECASE) -> tuple[str, ...]:
    """Texts of ASCII characters, in lower case, one of which every match of the pattern
    holds (the longest such choice found); () when none is known: every text may match."""
    tree = _tree(source, flags)
    return _required(tree) if tree is not None else ()


def _required(items: Any) -> tuple[str, ...]:
    choices: list[tuple[str, ...]] = []
    run = ""
    for op, argument in items:
        if op is sre.LITERAL and argument < 128:
            run += chr(argument)
            continue
        choices.append((run,))
        run = ""
        if op is sre.SUBPATTERN:
            choices.append(_required(argument[3]))
        elif op is sre.ATOMIC_GROUP:
            choices.append(_required(argument))
        elif op in (*_BACKTRACKING_REPEATS, sre.POSSESSIVE_REPEAT) and argument[0] >= 1:
            choices.append(_required(argument[2]))
        elif op is sre.BRANCH:
            branches = [_required(branch) for branch in argument[1]]
            if all(branches):  # one of each branch's texts: one of them all
                choices.append(tuple(text for branch in branches for text in branch))
    choices = [choice for choice in [*choices, (run,)] if choice and all(choice)]
    if not choices:
        return ()
    best = max(choices, key=lambda choice: min(map(len, choice)))
    return tuple(dict.fromkeys(text.lower() for text in best))


def re2_module() -> Any:
    """google-re2's module, or None where it is not installed or PIPEWARDEN_RULES_ENGINE says
    python. Imported where a prefilter is built, not by the CLI's start."""
    if os.environ.get(ENGINE_VARIABLE, "").strip().lower() == "python":
        return None
    try:
        import re2
    except ImportError:
        return None
    return re2


def engine() -> str:
    """Which engine prefilters the rules, as `doctor` says it."""
    if re2_module() is None:
        how = (
            f"{ENGINE_VARIABLE}=python"
            if os.environ.get(ENGINE_VARIABLE, "").strip().lower() == "python"
            else "install pipewarden[re2]"
        )
        return f"Python re ({how} for RE2's one pass over all the rules: the same answers, faster)"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"RE2 prefilter (google-re2 {version('google-re2')})"
    except PackageNotFoundError:
        return "RE2 prefilter (google-re2)"


def _re2_options(re2: Any) -> Any:
    options = re2.Options()
    options.case_sensitive = False
    options.log_errors = False  # a pattern RE2 cannot read is reported by `rules check`
    options.max_mem = 64 << 20  # room for a chunk of patterns in one set
    return options


def _re2_reason(re2: Any, pattern: str, options: Any) -> str:
    try:
        re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "refused"
        return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
    return "refused in a set"


@functools.lru_cache(maxsize=65536)
def untimed_length(source: str, flags: int) -> int:
    """The longest text the pattern may be searched in without the timer (-1: none).

    An upper bound of the work of a backtracking search over a text of length n is
    (n + 1) start positions × the ways through the pattern × (pattern + n) steps each;
    the ways multiply along a sequence, add over alternatives, and a repeat of a part
    with w ways up to k times has w⁰ + … + wᵏ. Up to the returned length that bound
    stays under WORK_MAX, so the match ends within milliseconds whatever the text.
    """
    parsed = _tree(source, flags)
    if parsed is None:
        return -1
    fits, past = -1, 1 << 20
    while past - fits > 1:
        middle = (fits + past) // 2
        if (middle + 1) * _ways(parsed, middle) * (len(source) + middle) <= WORK_MAX:
            fits = middle
        else:
            past = middle
    return fits


def _ways(items: Any, n: int) -> int:
    """Ways through a sequence on a text of length n, capped just past WORK_MAX."""
    total = 1
    for op, argument in items:
        total *= _item_ways(op, argument, n)
        if total > WORK_MAX:
            return WORK_MAX + 1
    return total


def _item_ways(op: Any, argument: Any, n: int) -> int:
    if op in _ONE_WAY:
        return 1
    if op in _BACKTRACKING_REPEATS:
        least, most, body = argument
        return _repeat_ways(least, min(most, n), _ways(body, n))
    if op is sre.POSSESSIVE_REPEAT:  # never backtracked into: one try per repetition
        return max(1, min(argument[1], n)) * _ways(argument[2], n)
    if op in _BACKREFERENCES:  # one way, but a scan as long as the text
        return n + 1
    if op is sre.GROUPREF_EXISTS:
        return sum(_ways(part, n) if part is not None else 1 for part in argument[1:])
    parts = _subpatterns(op, argument)
    if not parts:
        return WORK_MAX + 1  # an operation this bound does not know: always timed
    return sum(_ways(part, n) for part in parts)


def _repeat_ways(least: int, most: int, body: int) -> int:
    if most < least:
        return 1
    if body == 1:
        return most - least + 1
    total, term = 0, body**least if least < 64 else WORK_MAX + 1
    for _ in range(least, most + 1):
        total += term
        term *= body
        if total > WORK_MAX:
            return WORK_MAX + 1
    return total


def _nested(items: Any, inside_repeat: bool) -> bool:
    for op, argument in items:
        if op in _ONE_WAY:
            continue
        if op in _BACKTRACKING_REPEATS:
            _, most, body = argument
            repeats = most > 1
            if (repeats and inside_repeat) or _nested(body, inside_repeat or repeats):
                return True
        elif op is sre.POSSESSIVE_REPEAT:
            if _nested(argument[2], inside_repeat=False):
                return True
        elif any(_nested(part, inside_repeat) for part in _subpatterns(op, argument)):
            return True
    return False


def _has(items: Any, wanted: Any) -> bool:
    """Whether any item at any depth of a parsed pattern is `wanted(op, argument)`."""
    for op, argument in items or ():
        if wanted(op, argument):
            return True
        parts = _subpatterns(op, argument)
        if op in _BACKTRACKING_REPEATS or op is sre.POSSESSIVE_REPEAT:
            parts = [argument[2]]
        if any(_has(part, wanted) for part in parts):
            return True
    return False


def _subpatterns(op: Any, argument: Any) -> list[Any]:
    if op is sre.SUBPATTERN:
        return [argument[3]]
    if op is sre.BRANCH:
        return list(argument[1])
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return [argument[1]]
    if op is sre.ATOMIC_GROUP:
        return [argument]
    if op is sre.GROUPREF_EXISTS:
        return [part for part in argument[1:] if part is not None]
    return []
