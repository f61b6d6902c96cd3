"""A parser for fwup's meta.conf, which is libconfuse syntax.

The hub never runs fwup, so it has to read meta.conf exactly as libconfuse does:
a value written unquoted (`meta-version=1.3.0`), quoted with backslash escapes
(`meta-misc="a \\"b\\""`), single-quoted, or as a list (`{a, "b c", 3}`); `#`,
`//` and `/* */` comments outside strings; backslash-newline continuations;
sections with or without a title (`file-resource "rootfs.img" { ... }`,
`task "upgrade" { on-resource "x" { ... } }`) nested to any depth; and function
calls (`raw_write(0)`). The parser keeps every key it reads; the caller picks the
ones it knows, which is how fwup's CFGF_IGNORE_UNKNOWN behaves.

A syntax error raises MetaConfError with a line number a person can act on, and
so does a file past the limits below: the parser is recursive (one call per
section level), and meta.conf is read from an uploaded file, so nesting, the
number of tokens and entries, and the length of one string are bounded to keep a
hostile file a refusal rather than a RecursionError or a memory spike. Real
meta.conf files nest three levels and hold a few hundred tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Value = str | list[str]

# Characters that end an unquoted word. libconfuse's unquoted strings stop at
# whitespace and at its punctuation.
_DELIMITERS = frozenset(" \t\r\n\f\v{}()=,\"'#;")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "b": "\b", "a": "\a", "e": "\x1b"}

# Far above what fwup writes (task > on-resource > funlist is three levels, a
# Nerves system's meta.conf is a few hundred tokens), far below what costs the hub.
MAX_DEPTH = 32  # section levels; Python's own recursion limit is about 1,000 frames
MAX_TOKENS = 100_000  # about 12 MB of token objects at worst
MAX_ENTRIES = 20_000  # options, sections, calls and list items, all levels together
MAX_STRING = 64 * 1024  # characters in one word or string


class MetaConfError(ValueError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"meta.conf line {line}: {message}")
        self.line = line


@dataclass
class Section:
    kind: str
    title: str | None
    body: Block


@dataclass
class Block:
    """The options (key -> value, the last assignment wins) and sections of one level."""

    options: dict[str, Value] = field(default_factory=dict)
    sections: list[Section] = field(default_factory=list)
    calls: list[tuple[str, list[str]]] = field(default_factory=list)

    def string(self, key: str) -> str | None:
        value = self.options.get(key)
        if isinstance(value, list):
            return ",".join(value)
        return value

    def sections_of(self, kind: str) -> list[Section]:
        return [s for s in self.sections if s.kind == kind]


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string", or the punctuation itself: { } ( ) = += ,
    text: str
    line: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        if len(tokens) > MAX_TOKENS:
            raise MetaConfError(f"more than {MAX_TOKENS:,} tokens; this is not a fwup meta.conf", line)
        if tokens and len(tokens[-1].text) > MAX_STRING:
            raise MetaConfError(f"a value is longer than {MAX_STRING:,} characters", tokens[-1].line)
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r\f\v;":
            # libconfuse accepts ';' as an optional separator between options.
            i += 1
        elif c == "\\" and text.startswith("\n", i + 1):
            # A continuation outside a string just joins the lines.
            line += 1
            i += 2
        elif c == "\\" and text.startswith("\r\n", i + 1):
            line += 1
            i += 3
        elif c == "#" or text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end == -1 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end == -1:
                raise MetaConfError("comment opened with /* is never closed", line)
            line += text.count("\n", i, end)
            i = end + 2
        elif c in "{}(),=":
            tokens.append(_Token(c, c, line))
            i += 1
        elif c == "+" and text.startswith("=", i + 1):
            tokens.append(_Token("+=", "+=", line))
            i += 2
        elif text.startswith('"""', i):
            end = text.find('"""', i + 3)
            if end == -1:
                raise MetaConfError('string opened with """ is never closed', line)
            tokens.append(_Token("string", text[i + 3 : end], line))
            line += text.count("\n", i, end)
            i = end + 3
        elif c == '"':
            value, i, end_line = _double_quoted(text, i + 1, line)
            tokens.append(_Token("string", value, line))
            line = end_line
        elif c == "'":
            value, i, end_line = _single_quoted(text, i + 1, line)
            tokens.append(_Token("string", value, line))
            line = end_line
        else:
            start = i
            while i < n and text[i] not in _DELIMITERS and not (text[i] == "+" and text.startswith("=", i + 1)):
                if text[i] == "/" and text.startswith(("//", "/*"), i):
                    break
                i += 1
            tokens.append(_Token("word", text[start:i], line))
    if tokens and len(tokens[-1].text) > MAX_STRING:
        raise MetaConfError(f"a value is longer than {MAX_STRING:,} characters", tokens[-1].line)
    return tokens


def _double_quoted(text: str, i: int, line: int) -> tuple[str, int, int]:
    start_line = line
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return "".join(out), i + 1, line
        if c == "\n":
            line += 1
            out.append(c)
            i += 1
        elif c == "\\":
            if i + 1 >= n:
                break
            nxt = text[i + 1]
            if nxt == "\n":  # continuation: the newline is dropped
                line += 1
                i += 2
            elif nxt == "\r" and text.startswith("\n", i + 2):
                line += 1
                i += 3
            elif nxt in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[nxt])
                i += 2
            elif nxt == "x":
                digits = _take(text, i + 2, "0123456789abcdefABCDEF", 2)
                if not digits:
                    raise MetaConfError("\\x needs hex digits", line)
                out.append(chr(int(digits, 16)))
                i += 2 + len(digits)
            elif nxt in "01234567":
                digits = _take(text, i + 1, "01234567", 3)
                out.append(chr(int(digits, 8)))
                i += 1 + len(digits)
            else:
                # \" \\ \' \$ and any other escaped character stand for themselves.
                out.append(nxt)
                i += 2
        else:
            out.append(c)
            i += 1
    raise MetaConfError('string is never closed (missing ")', start_line)


def _single_quoted(text: str, i: int, line: int) -> tuple[str, int, int]:
    start_line = line
    out: list[str] = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == "'":
            return "".join(out), i + 1, line
        if c == "\\" and i + 1 < n and text[i + 1] in "'\\":
            out.append(text[i + 1])
            i += 2
            continue
        if c == "\n":
            line += 1
        out.append(c)
        i += 1
    raise MetaConfError("string is never closed (missing ')", start_line)


def _take(text: str, i: int, allowed: str, limit: int) -> str:
    end = i
    while end < len(text) and end - i < limit and text[end] in allowed:
        end += 1
    return text[i:end]


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.entries = 0

    def count(self, line: int) -> None:
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise MetaConfError(f"more than {MAX_ENTRIES:,} entries; this is not a fwup meta.conf", line)

    def peek(self, offset: int = 0) -> _Token | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def next(self, what: str) -> _Token:
        token = self.peek()
        if token is None:
            last = self.tokens[-1].line if self.tokens else 1
            raise MetaConfError(f"unexpected end of file, expected {what}", last)
        self.pos += 1
        return token

    def block(self, closing: bool, opened_at: int = 0, depth: int = 0) -> Block:
        if depth > MAX_DEPTH:
            raise MetaConfError(f"sections are nested more than {MAX_DEPTH} levels deep", opened_at)
        block = Block()
        while True:
            token = self.peek()
            if token is None:
                if closing:
                    raise MetaConfError("section is never closed (missing })", opened_at)
                return block
            if token.kind == "}":
                if not closing:
                    raise MetaConfError("} without a matching {", token.line)
                self.pos += 1
                return block
            self.entry(block, depth)

    def entry(self, block: Block, depth: int) -> None:
        key = self.next("an option name")
        if key.kind not in ("word", "string"):
            raise MetaConfError(f"expected an option name, found {_shown(key.text)}", key.line)
        self.count(key.line)
        following = self.peek()
        if following is None:
            raise MetaConfError(f"{_shown(key.text)} has no value", key.line)
        if following.kind in ("=", "+="):
            self.pos += 1
            value = self.value()
            existing = block.options.get(key.text)
            if following.kind == "+=" and existing is not None:
                # Extended in place: a long run of `+=` stays linear, not quadratic.
                base = existing if isinstance(existing, list) else [existing]
                base.extend(value if isinstance(value, list) else [value])
                value = base
            block.options[key.text] = value
        elif following.kind == "(":
            self.pos += 1
            block.calls.append((key.text, self.arguments()))
        elif following.kind == "{":
            self.pos += 1
            body = self.block(closing=True, opened_at=following.line, depth=depth + 1)
            block.sections.append(Section(key.text, None, body))
        elif following.kind in ("word", "string") and (after := self.peek(1)) is not None and after.kind == "{":
            self.pos += 2
            body = self.block(closing=True, opened_at=after.line, depth=depth + 1)
            block.sections.append(Section(key.text, following.text, body))
        else:
            raise MetaConfError(
                f"expected = or {{ after {_shown(key.text)}, found {_shown(following.text)}", following.line
            )

    def scalar(self) -> str:
        token = self.next("a value")
        if token.kind not in ("word", "string"):
            raise MetaConfError(f"expected a value, found {_shown(token.text)}", token.line)
        return token.text

    def value(self) -> Value:
        token = self.peek()
        if token is not None and token.kind == "{":
            self.pos += 1
            return self.items("}")
        return self.scalar()

    def items(self, closer: str) -> list[str]:
        items: list[str] = []
        token = self.peek()
        if token is not None and token.kind == closer:
            self.pos += 1
            return items
        while True:
            items.append(self.scalar())
            self.count(self.tokens[self.pos - 1].line)
            token = self.next(f"',' or '{closer}'")
            if token.kind == closer:
                return items
            if token.kind != ",":
                raise MetaConfError(f"expected ',' or '{closer}', found {_shown(token.text)}", token.line)

    def arguments(self) -> list[str]:
        return self.items(")")


def _shown(text: str) -> str:
    """A token as quoted in an error message, cut short: messages reach the uploader."""
    return repr(text) if len(text) <= 60 else repr(text[:60]) + "..."


def parse(text: str) -> Block:
    """Parse meta.conf text into its top-level Block."""
    return _Parser(_tokenize(text)).block(closing=False)


def parse_bytes(data: bytes) -> Block:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MetaConfError("not valid UTF-8", line) from None
    return parse(text)
