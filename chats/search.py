"""Message search: how a query is read, and the snippet of a hit (pure functions).

The query itself is `chats.selectors.message_search`. Content is in any language, so
nothing here knows one: a query is split into words the way PostgreSQL's default text
search parser splits content (runs of letters and digits, `\\w`), and each word matches
a word of the message that starts with it (a prefix: `chat` finds `chats`, `친구` finds
`친구들과`, `été` finds `été,`), through the 'simple' configuration (lower-cased, no
stemming, no stop words: right for no language and wrong for none). Scripts written
without spaces between words (Chinese, Japanese; Korean compounds; Thai) also match
anywhere inside a word: a query with one of their characters matches as a substring too
(through a trigram index on PostgreSQL).

Snippets are plain text with the matches given as offsets (`highlights`), never as
markup: nothing in a message can pass for a highlight or need escaping, and Android's
`Spannable.setSpan` takes the offsets as they are (UTF-16 code units, as Java's and
Kotlin's strings count).
"""

from __future__ import annotations

import re
import unicodedata

QUERY_MAX_LENGTH = 200
# Words of a query looked for; more are ignored (a query is a few words, not a text).
MAX_WORDS = 8
SNIPPET_LENGTH = 120
# How much text a snippet shows before its first match.
SNIPPET_LEAD = 40
ELLIPSIS = "…"

_WORD = re.compile(r"\w+")
# Scripts whose words are not separated by spaces (or whose words are glued to
# particles, Korean): a query in them matches inside words too.
_SPACELESS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI", "LAO", "KHMER", "MYANMAR", "TIBETAN")


def words_of(query: str) -> list[str]:
    """The words of a query, lower-cased, each once, at most `MAX_WORDS`."""
    words: list[str] = []
    for word in _WORD.findall(query.lower()):
        if word not in words:
            words.append(word)
    return words[:MAX_WORDS]


def is_spaceless(text: str) -> bool:
    """Whether the text has a character of a script written without spaces."""
    for char in text:
        if ord(char) > 0x2E7F and unicodedata.name(char, "").startswith(_SPACELESS):
            return True
    return False


def tsquery_of(words: list[str]) -> str:
    """`to_tsquery('simple', ...)` text: every word, as a prefix. Words are `\\w` runs,
    so they hold no quote, operator or backslash; they are quoted all the same."""
    return " & ".join(f"'{w}':*" for w in words)


def like_pattern(text: str) -> str:
    """An ILIKE/LIKE pattern finding `text` anywhere (its own `%`, `_`, `\\` escaped)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def snippet(content: str, words: list[str], *, substring: bool) -> tuple[str, list[list[int]]]:
    """A piece of `content` around its first match, and where the matches are in it.

    A word matches where a word of the content starts with it (anywhere with
    `substring`), case-insensitively. Returns (text, [[start, end], ...]): the text is
    the content's own (whitespace runs made one space), with `…` where it was cut; the
    offsets are UTF-16 code units into it, in order, not overlapping.
    """
    text = " ".join(content.split())
    spans: list[tuple[int, int]] = []
    for word in words:
        pattern = re.escape(word) if substring else rf"(?<!\w){re.escape(word)}"
        spans.extend(m.span() for m in re.finditer(pattern, text, re.IGNORECASE))
    spans.sort()
    start = 0
    if spans and len(text) > SNIPPET_LENGTH:
        start = max(0, min(spans[0][0] - SNIPPET_LEAD, len(text) - SNIPPET_LENGTH))
        # Not in the middle of a word, when a space is near.
        space = text.rfind(" ", max(0, start - 15), start + 1)
        if space >= 0 and start > 0:
            start = space + 1
    end = min(len(text), start + SNIPPET_LENGTH)
    prefix = ELLIPSIS if start > 0 else ""
    suffix = ELLIPSIS if end < len(text) else ""
    piece = text[start:end]
    highlights: list[list[int]] = []
    last = 0
    for s, e in spans:
        s, e = max(s, start), min(e, end)
        if e <= s or s < last:
            continue
        last = e
        highlights.append([_utf16(prefix + text[start:s]), _utf16(prefix + text[start:e])])
    return prefix + piece + suffix, highlights
