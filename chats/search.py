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

On SQLite the same, through FTS5 (migration chats 0006): words as prefix queries on a
`unicode61` table (`remove_diacritics 0`, case folded: what 'simple' does), substrings
of 3 characters or more on a `trigram` table, shorter ones by LIKE over the caller's
chats (as on PostgreSQL, where no trigram can narrow them either). Why a trigram table
and not LIKE alone, measured with SQLite 3.40.1 on 200,000 messages in 200 chats (30% of
them Korean), the searcher in 100 of them: a 3-character Korean substring took 200-250
ms by LIKE (every message of the caller's chats read), 2-8 ms by the trigram table, 0.1
ms for one that is nowhere; the price is the file (23 MB with the word table alone, 45
MB with both) and the send (a one-row insert and commit, 180 us with the word table
alone, 310 us with both). Searching is what the index is for; on PostgreSQL the send pays
for pg_trgm the same way. Word queries took 1-25 ms (`c`, a prefix of many words, 25).

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
# SQLite's FTS5 tables over chats_message.content (migration chats 0006).
FTS_WORDS = "chats_message_fts"
FTS_TRIGRAMS = "chats_message_trgm"

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
        # Below U+0E00 (Thai, the first of them) no name needs looking up.
        if ord(char) >= 0x0E00 and unicodedata.name(char, "").startswith(_SPACELESS):
            return True
    return False


def tsquery_of(words: list[str]) -> str:
    """`to_tsquery('simple', ...)` text: every word, as a prefix. Words are `\\w` runs,
    so they hold no quote, operator or backslash; they are quoted all the same."""
    return " & ".join(f"'{w}':*" for w in words)


def fts5_query_of(words: list[str]) -> str:
    """FTS5 MATCH text for the word table: every word, as a prefix (`"word"*`), all of
    them. Each word is an FTS5 string (in double quotes, its own `"` doubled), so no
    character or keyword of a query (`"`, `*`, `^`, `:`, `AND`, `NEAR(`) is FTS5 syntax.
    A word without a letter or digit (`_`: \\w, but no token for FTS5 nor PostgreSQL) is
    left out, as `to_tsquery` leaves it out; "" if none is left (search no words)."""
    return " AND ".join(fts5_string(w) + "*" for w in words if any(c.isalnum() for c in w))


def fts5_string(text: str) -> str:
    """`text` as an FTS5 string: the trigram table's query for a substring of it."""
    return '"' + text.replace('"', '""') + '"'


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
