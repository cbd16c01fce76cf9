"""What a GBNF grammar would cost llama.cpp, measured before llama.cpp sees it.

llama.cpp (0.3.36's vendored copy) parses grammars recursively and builds its
parse stacks without bounds, so a small grammar can crash or stall the model:
  - nested groups recurse once per level: ~18,700 levels overflow an 8 MiB stack;
  - its left-recursion check recurses once per rule of a chain, and visits a
    rule again for every path that reaches it (exponential in nested alternatives);
  - a position opens one stack per alternative reachable from it, multiplied
    through nested rules, and every stack is checked against the whole
    vocabulary at each token (8 levels of 10 alternatives: 10^8 stacks);
  - a terminal no token can produce (U+0000, beyond U+10FFFF, an empty
    character class) or a token id outside the vocabulary leaves the sampler
    with no candidate, and llama.cpp aborts.

This module parses GBNF the way llama.cpp does (same syntax, same rewriting of
groups and repetitions into rules), without recursion, and measures those
quantities. `branches` is an upper bound of the stacks one position opens (it
also bounds the left-recursion check's visits). Ambiguity that compounds only
while text is generated (a recursive rule with alternatives that share a
prefix) is not bounded here; that needs a watchdog on the model process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

REPETITION_THRESHOLD = 2000
"""llama.cpp refuses {m,} with m above this and reads {m,n} with n above it as {m,}."""
MAX_CODE_POINT = 0x10FFFF
_CAP = 1 << 62
"""Branch counts stop growing here: beyond any limit, and no giant integers."""

TERM = -1
"""A symbol that consumes one character or token."""
EMPTY = -2
"""The empty literal ""."""

_NAME = re.compile(r"[a-zA-Z0-9-]+")
_DIGITS = re.compile(r"[0-9]+")
_PLAIN = re.compile(r'[^"\\]+')
_ESCAPES = {"t": 9, "r": 13, "n": 10, "\\": 92, '"': 34, "[": 91, "]": 93, "-": 45}
_HEX = {"x": 2, "u": 4, "U": 8}


class GrammarError(ValueError):
    """The grammar is malformed, or llama.cpp could not take it safely."""


class GrammarTooLarge(GrammarError):
    """Deeper or with more rules than allowed: parsing stops there."""


@dataclass
class _Rule:
    alts: list[list[int]] = field(default_factory=lambda: [[]])
    repeat: tuple[int, int | None] | None = None
    """(min, max or None): the rule is its operand (alts[0][0]) repeated, as llama.cpp rewrites it."""


@dataclass(frozen=True)
class GrammarStats:
    depth: int
    """Deepest nesting of groups."""
    rules: int
    """Rules as llama.cpp counts them: named rules, groups, and the rules repetitions expand to."""
    branches: int
    """Upper bound of the parse stacks llama.cpp opens at one position."""
    token_ids: tuple[int, ...]
    """Token ids named as <[id]> or !<[id]>."""


def analyze(text: str, max_depth: int, max_rules: int) -> GrammarStats:
    """Parse ``text`` as llama.cpp would and measure it; GrammarError if it is malformed,
    GrammarTooLarge as soon as it nests deeper than ``max_depth`` or has more than ``max_rules`` rules."""
    parser = _Parser(text, max_depth, max_rules)
    parser.parse()
    return GrammarStats(parser.max_depth, parser.llama_rules, _branches(parser.rules, parser.names),
                        tuple(parser.token_ids))


class _Parser:
    def __init__(self, text: str, max_depth: int, max_rules: int) -> None:
        self.src = text
        self.max_depth_allowed = max_depth
        self.max_rules = max_rules
        self.pos = 0
        self.rules: list[_Rule] = []
        self.names: dict[str, int] = {}
        self.defined: set[int] = set()
        self.token_ids: list[int] = []
        self.max_depth = 0
        self.llama_rules = 0

    # Lexing

    def _peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.src[i] if i < len(self.src) else ""

    def _space(self, newline_ok: bool) -> None:
        src, pos, end = self.src, self.pos, len(self.src)
        while pos < end:
            c = src[pos]
            if c == "#":
                while pos < end and src[pos] not in "\r\n":
                    pos += 1
            elif c in " \t" or (newline_ok and c in "\r\n"):
                pos += 1
            else:
                break
        self.pos = pos

    def _error(self, what: str) -> GrammarError:
        return GrammarError(f"{what} at character {self.pos}: {self.src[self.pos:self.pos + 24]!r}")

    def _name(self) -> str:
        match = _NAME.match(self.src, self.pos)
        if match is None:
            raise self._error("expecting a rule name")
        self.pos = match.end()
        return match.group()

    def _int(self) -> int:
        match = _DIGITS.match(self.src, self.pos)
        if match is None:
            raise self._error("expecting an integer")
        if len(match.group()) > 19:
            raise self._error("the number is too large")
        self.pos = match.end()
        return int(match.group())

    def _char(self) -> int:
        """One character of a literal or class, escapes decoded; the code point."""
        c = self._peek()
        if not c:
            raise self._error("unexpected end of input")
        if c != "\\":
            self.pos += 1
            return ord(c)
        kind = self._peek(1)
        if kind in _HEX:
            digits = self.src[self.pos + 2:self.pos + 2 + _HEX[kind]]
            if len(digits) != _HEX[kind] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise self._error(f"expecting {_HEX[kind]} hex digits")
            self.pos += 2 + _HEX[kind]
            return int(digits, 16)
        if kind in _ESCAPES:
            self.pos += 2
            return _ESCAPES[kind]
        raise self._error("unknown escape")

    def _producible(self, code: int) -> None:
        if code == 0 or code > MAX_CODE_POINT:
            raise self._error(f"U+{code:04X} cannot be produced by any token (llama.cpp would abort)")

    # Rules

    def _rule_id(self, name: str) -> int:
        rule = self.names.get(name)
        if rule is None:
            rule = self.names[name] = self._new_rule()
            self._count_rules(0)
        return rule

    def _new_rule(self, repeat: tuple[int, int | None] | None = None) -> int:
        self.rules.append(_Rule(repeat=repeat))
        return len(self.rules) - 1

    def _count_rules(self, added: int) -> None:
        self.llama_rules += added
        if self.llama_rules + len(self.names) > self.max_rules:
            raise GrammarTooLarge(f"the grammar has more than {self.max_rules} rules "
                                  "(groups and repetitions count as llama.cpp expands them)")

    def parse(self) -> None:
        self._space(True)
        while self.pos < len(self.src):
            self._parse_rule()
        undefined = [name for name, rule in self.names.items() if rule not in self.defined]
        if undefined:
            raise GrammarError(f"undefined rule {undefined[0]!r}")
        if "root" not in self.names:
            raise GrammarError("the grammar has no `root` rule")
        self.llama_rules += len(self.names)

    def _parse_rule(self) -> None:
        rule = self._rule_id(self._name())
        self._space(False)
        if not self.src.startswith("::=", self.pos):
            raise self._error("expecting ::=")
        self.pos += 3
        self._space(True)
        self.defined.add(rule)
        self.rules[rule].alts = [[]]  # a rule defined twice keeps its last definition, as in llama.cpp
        self._parse_alternates(rule)
        c = self._peek()
        if c == "\r":
            self.pos += 2 if self._peek(1) == "\n" else 1
        elif c == "\n":
            self.pos += 1
        elif c:
            raise self._error("expecting a newline or the end")
        self._space(True)

    def _parse_alternates(self, top: int) -> None:
        """Sequences separated by |; a group's alternates are parsed on an explicit stack, not by recursion."""
        frames = [top]  # the rule being defined, then the groups open inside it, innermost last
        while True:
            rule = self.rules[frames[-1]]
            group = self._parse_sequence(rule.alts[-1], nested=len(frames) > 1)
            if group is not None:
                frames.append(group)
                self.max_depth = max(self.max_depth, len(frames) - 1)
                if self.max_depth > self.max_depth_allowed:
                    raise GrammarTooLarge(f"the grammar nests groups more than {self.max_depth_allowed} deep")
                continue
            c = self._peek()
            if c == "|":
                self.pos += 1
                self._space(True)
                rule.alts.append([])
            elif len(frames) > 1:
                if c != ")":
                    raise self._error("expecting ')'")
                self.pos += 1
                group = frames.pop()
                self.rules[frames[-1]].alts[-1].append(group)  # the sequence around it goes on
                self._space(len(frames) > 1)
            else:
                return

    def _parse_sequence(self, seq: list[int], nested: bool) -> int | None:
        """Symbols until something that is not one; at a '(' the new group's rule, to be parsed first."""
        while self.pos < len(self.src):
            c = self.src[self.pos]
            if c == '"':
                self.pos += 1
                seq.append(self._literal())
            elif c == "[":
                self.pos += 1
                self._char_class()
                seq.append(TERM)
            elif c in "<!":
                self._token()
                seq.append(TERM)
            elif c == "(":
                self.pos += 1
                self._space(True)
                self._count_rules(1)
                return self._new_rule()
            elif c == ".":
                self.pos += 1
                seq.append(TERM)
            elif c in "*+?":
                self.pos += 1
                self._repeat(seq, *{"*": (0, None), "+": (1, None), "?": (0, 1)}[c])
            elif c == "{":
                self._braces(seq, nested)
            elif _NAME.match(c):
                seq.append(self._rule_id(self._name()))
            else:
                return None
            self._space(nested)
        return None

    def _literal(self) -> int:
        empty = True
        while True:
            match = _PLAIN.match(self.src, self.pos)
            if match is not None:
                empty = False
                if "\0" in match.group():
                    raise self._error("U+0000 cannot be produced by any token (llama.cpp would abort)")
                self.pos = match.end()
            c = self._peek()
            if c == '"':
                self.pos += 1
                return EMPTY if empty else TERM
            if not c:
                raise self._error("unexpected end of input")
            self._producible(self._char())
            empty = False

    def _char_class(self) -> None:
        negated = self._peek() == "^"
        self.pos += negated
        ranges: list[tuple[int, int]] = []
        while self._peek() != "]":
            low = self._char()
            high = low
            if self._peek() == "-" and self._peek(1) not in ("]", ""):
                self.pos += 1
                high = self._char()
            ranges.append((low, high))
        self.pos += 1
        if not _class_matches_something(ranges, negated):
            raise self._error("this character class admits no character a token can produce "
                              "(llama.cpp would abort)")

    def _token(self) -> None:
        if self._peek() == "!":
            self.pos += 1
        if self._peek() != "<":
            raise self._error("expecting '<'")
        self.pos += 1
        if self._peek() == "[":
            self.pos += 1
            token = self._int()
            if not self.src.startswith("]>", self.pos):
                raise self._error("expecting ']>'")
            self.pos += 2
            self.token_ids.append(token)
            return
        end = self.src.find(">", self.pos)
        if end < 0:
            raise self._error("expecting '>'")
        self.pos = end + 1

    def _braces(self, seq: list[int], nested: bool) -> None:
        self.pos += 1
        self._space(nested)
        low = self._int()
        self._space(nested)
        high: int | None = low
        if self._peek() == ",":
            self.pos += 1
            self._space(nested)
            high = self._int() if _DIGITS.match(self._peek()) else None
            self._space(nested)
        if self._peek() != "}":
            raise self._error("expecting '}'")
        self.pos += 1
        if low > REPETITION_THRESHOLD:
            raise self._error(f"llama.cpp refuses more than {REPETITION_THRESHOLD} repetitions")
        if high is not None and high > REPETITION_THRESHOLD:
            high = None
        if high is not None and high < low:  # llama.cpp would expand 2^64 - (low - high) rules
            raise self._error("the repetition's maximum is below its minimum")
        self._repeat(seq, low, high)

    def _repeat(self, seq: list[int], low: int, high: int | None) -> None:
        if not seq or seq[-1] == EMPTY:
            raise self._error("expecting something to repeat before */+/?/{")
        rule = self._new_rule(repeat=(low, high))
        self.rules[rule].alts = [[seq[-1]]]
        seq[-1] = rule
        self._count_rules(1 if high is None else high - low)


def _class_matches_something(ranges: list[tuple[int, int]], negated: bool) -> bool:
    """Does the class admit a code point in [1, U+10FFFF], the ones tokens can produce?"""
    spans = sorted((max(low, 1), min(high, MAX_CODE_POINT)) for low, high in ranges)
    spans = [(low, high) for low, high in spans if low <= high]
    if not negated:
        return bool(spans)
    reached = 0  # the class excludes [1, reached]
    for low, high in spans:
        if low > reached + 1:
            return True
        reached = max(reached, high)
    return reached < MAX_CODE_POINT


def _branches(rules: list[_Rule], names: dict[str, int]) -> int:
    """The most parse stacks one position can open (llama_grammar_advance_stack), bounded above.

    A position whose symbol is a rule opens one stack per terminal its alternatives can begin
    with, through nested rules, and through the following symbols while what precedes can be
    empty; stacks reached the same way are merged, so each path counts once. Each rule entered
    also counts one: that bounds llama.cpp's left-recursion check, which visits rules this way.
    """
    nullable = _nullable(rules)
    order = _left_order(rules, nullable)
    first = [0] * len(rules)

    def sym_first(sym: int) -> int:
        return 1 if sym == TERM else 0 if sym == EMPTY else first[sym]

    def sym_nullable(sym: int) -> bool:
        return sym == EMPTY or (sym >= 0 and nullable[sym])

    worst = 0
    for index in order:  # every rule after the rules it can begin with
        rule = rules[index]
        if rule.repeat is not None:
            high = rule.repeat[1]
            operand = rule.alts[0][0]
            copies = high if sym_nullable(operand) and high is not None else 1
            first[index] = min(_CAP, 1 + copies * sym_first(operand))
            continue
        total = 1
        for alt in rule.alts:
            reach = 0
            for sym in reversed(alt):  # reach: stacks opened at this position of the alternative
                reach = min(_CAP, sym_first(sym) + (reach if sym_nullable(sym) else 0))
                worst = max(worst, reach)
            total = min(_CAP, total + reach)
        first[index] = total
    return max(worst, max(first, default=0), first[names["root"]])


def _nullable(rules: list[_Rule]) -> list[bool]:
    """Which rules can match the empty text (worklist, linear in the grammar's size)."""
    nullable = [False] * len(rules)
    pending: list[int] = []  # per alternative: rule symbols not yet known to be nullable
    owner: list[int] = []
    uses: list[list[int]] = [[] for _ in rules]  # rule -> alternatives using it (once per use)
    ready: list[int] = []
    for index, rule in enumerate(rules):
        alts = rule.alts
        if rule.repeat is not None and rule.repeat[0] == 0:
            alts = [*alts, []]  # zero repetitions: empty
        for alt in alts:
            alt_id = len(pending)
            owner.append(index)
            if any(sym == TERM for sym in alt):
                pending.append(-1)  # never empty
                continue
            refs = [sym for sym in alt if sym >= 0]
            pending.append(len(refs))
            for sym in refs:
                uses[sym].append(alt_id)
            if not refs:
                ready.append(index)
    while ready:
        index = ready.pop()
        if nullable[index]:
            continue
        nullable[index] = True
        for alt_id in uses[index]:
            pending[alt_id] -= 1
            if pending[alt_id] == 0:
                ready.append(owner[alt_id])
    return nullable


def _left_order(rules: list[_Rule], nullable: list[bool]) -> list[int]:
    """Rules ordered so that each comes after every rule it can begin with; left recursion is an error
    (llama.cpp refuses it too)."""
    edges: list[list[int]] = []
    for index, rule in enumerate(rules):
        begins: list[int] = []
        for alt in rule.alts:
            for sym in alt:
                if sym >= 0:
                    begins.append(sym)
                if not (sym == EMPTY or (sym >= 0 and nullable[sym])):
                    break
        if rule.repeat is not None and rule.repeat[1] is None and begins and nullable[begins[0]]:
            begins.append(index)  # S* of an S that can be empty: S' ::= S S' | is left-recursive
        edges.append(begins)
    order: list[int] = []
    state = [0] * len(rules)  # 0 new, 1 on the path, 2 done
    for start in range(len(rules)):
        if state[start]:
            continue
        stack = [(start, 0)]
        state[start] = 1
        while stack:
            node, next_edge = stack[-1]
            if next_edge < len(edges[node]):
                stack[-1] = (node, next_edge + 1)
                target = edges[node][next_edge]
                if state[target] == 1:
                    raise GrammarError("the grammar is left-recursive (llama.cpp refuses it)")
                if state[target] == 0:
                    state[target] = 1
                    stack.append((target, 0))
            else:
                stack.pop()
                state[node] = 2
                order.append(node)
    return order
