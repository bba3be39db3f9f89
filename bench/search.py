"""Search on 1,000,000 messages, and what its indexes cost the message send.

    python bench/search.py [--messages 1000000] [--users 10000] [--chats 10000] [--sends 1000]

Starts a throw-away PostgreSQL cluster (tests/support/postgres.py, tuned for tests:
fsync off), migrates it, and fills it in SQL (generate_series, no API): users, 8,000
direct chats and 2,000 groups of 50, and the messages, which go to chats on a skewed
curve (groups get most) and whose words come from a vocabulary of Korean, French and
English words plus a long tail of made-up ones, drawn on a Zipf-like curve (a few words
are very common, most are rare). The first 20 users ("heavy" users) are also in 60
groups and 20 direct chats each: the ones who search.

Then:
- search: for each heavy user, one-word queries (`chats.selectors.message_search` and
  the hits' snippets, as the view runs them; in this process, no HTTP) for words of
  every frequency, from the most common to rare, in the three languages; p50/p95/p99
  over all and per frequency band;
- the send: `chats.services.message_send` (the real service, the one-statement write
  and the outbox row), N sends with both search indexes, with the words' index only,
  and with neither: ms per send.

The numbers go to stdout (and bench/results/search-<UTC timestamp>.txt).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.support.postgres import PostgresCluster  # noqa: E402

KOREAN = ("친구 주말 등산 영화 점심 회사 오늘 내일 사진 여행 커피 저녁 게임 초대 약속 "
          "시간 생일 축하 음악 공부 학교 집 바다 산 날씨").split()
FRENCH = ("bonjour salut demain soir café été rendez-vous ciné photo vacances travail "
          "déjeuner anniversaire merci d'accord peut-être bientôt week-end plage montagne").split()
ENGLISH = ("the you and see hello lunch tomorrow tonight climbing movie photo game invite "
           "coffee meeting birthday thanks sure maybe weekend beach mountain ropes crag").split()
TAIL = 5000  # made-up words after the real ones


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def fill(cursor, *, users: int, chats: int, messages: int) -> None:
    groups, heavy = chats // 5, 20
    real = KOREAN + FRENCH + ENGLISH
    # Real words first (the most common ranks), interleaved by language; then the tail.
    cursor.execute("CREATE TEMP TABLE vocab (rank int PRIMARY KEY, word text)")
    cursor.execute(
        "INSERT INTO vocab SELECT ordinality, w FROM unnest(%s::text[]) WITH ORDINALITY AS t(w, ordinality)",
        [[w for trio in zip(KOREAN, FRENCH, ENGLISH) for w in trio] + [w for w in real if w not in
         [x for trio in zip(KOREAN, FRENCH, ENGLISH) for x in trio]]],
    )
    cursor.execute("SELECT count(*) FROM vocab")
    (n_real,) = cursor.fetchone()
    cursor.execute(
        "INSERT INTO vocab SELECT %s + i, CASE WHEN i %% 3 = 0 THEN "
        "chr(44032 + (i * 7919) %% 11172) || chr(44032 + (i * 104729) %% 11172) "
        "ELSE substr(md5(i::text), 1, 4 + i %% 5) END FROM generate_series(1, %s) i",
        [n_real, TAIL],
    )
    vocab_size = n_real + TAIL
    cursor.execute(
        """INSERT INTO accounts_user (id, password, is_superuser, username, first_name, last_name, email,
               is_staff, is_active, date_joined, presence, read_receipts, push_previews, display_name,
               avatar, avatar_thumbnail)
           SELECT i, '!', false, 'u' || i, '', '', '', false, true, now(), 'offline', true, true, '', '', ''
           FROM generate_series(1, %s) i""", [users])
    cursor.execute(
        """INSERT INTO chats_chat (id, kind, name, created_at, last_seq, activity_at, version)
           SELECT i, CASE WHEN i <= %s THEN 'group' ELSE 'direct' END, CASE WHEN i <= %s THEN 'g' || i ELSE '' END,
                  now(), 0, now(), 0
           FROM generate_series(1, %s) i""", [groups, groups, chats])
    # Groups of 50, direct chats of 2, spread over everyone; the heavy users also in 60
    # groups and 20 direct chats each.
    cursor.execute(
        """INSERT INTO chats_membership (chat_id, user_id, role, joined_at, joined_seq, last_read_seq,
               last_delivered_seq)
           SELECT DISTINCT ON (chat_id, user_id) chat_id, user_id, 'member', now(), 0, 0, 0 FROM (
               SELECT c AS chat_id, 1 + ((c * 37 + j * 7919) %% %(users)s) AS user_id
               FROM generate_series(1, %(chats)s) c,
                    generate_series(0, 49) j
               WHERE j < CASE WHEN c <= %(groups)s THEN 50 ELSE 2 END
               UNION ALL
               SELECT 1 + ((u * 131 + k * 17) %% %(groups)s), u
               FROM generate_series(1, %(heavy)s) u, generate_series(0, 59) k
               UNION ALL
               SELECT %(groups)s + 1 + ((u * 389 + k * 211) %% (%(chats)s - %(groups)s)), u
               FROM generate_series(1, %(heavy)s) u, generate_series(0, 19) k
           ) m""", {"users": users, "chats": chats, "groups": groups, "heavy": heavy})
    # Sentences of 4-12 words, drawn on a Zipf-like curve (rank ~ size * r^3).
    sentences = 200_000
    cursor.execute("CREATE TEMP TABLE sentence (id int PRIMARY KEY, content text)")
    cursor.execute("SELECT array_agg(word ORDER BY rank) FROM vocab")
    (words,) = cursor.fetchone()
    cursor.execute(
        """INSERT INTO sentence
           SELECT s, (SELECT string_agg((%s::text[])[1 + floor(%s * power(random(), 3))::int], ' ')
                      FROM generate_series(1, 4 + (s %% 9)) k WHERE s > 0)
           FROM generate_series(1, %s) s""", [words, vocab_size, sentences])
    cursor.execute(
        """INSERT INTO chats_message (chat_id, seq, author_id, type, content, created_at, deleted, version,
               reactions, mentions)
           SELECT chat_id, row_number() OVER w, 1 + (i %% %(users)s), 'text', s.content,
                  now() - (%(messages)s - i) * interval '1 second', false, row_number() OVER w, '[]', '[]'
           FROM (SELECT i, 1 + floor(%(chats)s * power(random(), 2))::int AS chat_id,
                        1 + floor(random() * %(sentences)s)::int AS sid
                 FROM generate_series(1, %(messages)s) i) g
           JOIN sentence s ON s.id = g.sid
           WINDOW w AS (PARTITION BY chat_id ORDER BY i)""",
        {"users": users, "chats": chats, "messages": messages, "sentences": sentences})
    cursor.execute(
        """UPDATE chats_chat c SET last_seq = m.n, version = m.n FROM (
               SELECT chat_id, max(seq) AS n FROM chats_message GROUP BY chat_id) m WHERE m.chat_id = c.id""")
    for table in ("accounts_user", "chats_chat", "chats_membership", "chats_message"):
        cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")


SEARCH_INDEXES = {
    "chats_message_search_idx": "CREATE INDEX chats_message_search_idx ON chats_message USING gin (to_tsvector('simple', content))",
    "chats_message_trgm_idx": "CREATE INDEX chats_message_trgm_idx ON chats_message USING gin (content gin_trgm_ops)",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--chats", type=int, default=10_000)
    parser.add_argument("--sends", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    cluster = PostgresCluster().start()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    try:
        import psycopg

        with psycopg.connect(cluster.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        os.environ.update(
            DJANGO_SETTINGS_MODULE="chatserver.settings", ENV_FILE="", DATABASE_URL=cluster.url("bench"),
            DATA_DIR=tempfile.mkdtemp(prefix="bench-search-"), LOG_LEVEL="WARNING",
        )
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        from accounts.models import User
        from chats import shapes
        from chats.selectors import message_search
        from chats.services.message_send import message_send

        call_command("migrate", verbosity=0)
        started = time.monotonic()
        with connection.cursor() as cursor:
            for name in SEARCH_INDEXES:
                cursor.execute(f"DROP INDEX {name}")
            fill(cursor, users=args.users, chats=args.chats, messages=args.messages)
            filled = time.monotonic()
            for sql in SEARCH_INDEXES.values():
                cursor.execute(sql)
            indexed = time.monotonic()
            cursor.execute("VACUUM ANALYZE chats_message")
            cursor.execute("ANALYZE")
            cursor.execute("SELECT count(*), count(DISTINCT chat_id) FROM chats_message")
            count, with_messages = cursor.fetchone()
            cursor.execute(
                "SELECT pg_size_pretty(pg_relation_size('chats_message')), "
                "pg_size_pretty(pg_relation_size('chats_message_search_idx')), "
                "pg_size_pretty(pg_relation_size('chats_message_trgm_idx'))")
            sizes = cursor.fetchone()
            cursor.execute(
                """SELECT count(DISTINCT m.chat_id), count(*) FROM chats_membership m
                   JOIN chats_message msg ON msg.chat_id = m.chat_id WHERE m.user_id BETWEEN 1 AND 20""")
            heavy_chats, heavy_messages = cursor.fetchone()
            cursor.execute("SELECT rank, word FROM vocab ORDER BY rank")
            vocab = cursor.fetchall()
        say(f"search bench {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, PostgreSQL {connection.pg_version // 10000}, "
            f"{os.cpu_count()} cores (fsync off)")
        say(f"filled {count:,} messages in {with_messages:,} chats ({args.users:,} users) in {filled - started:.0f} s; "
            f"indexes built in {indexed - filled:.0f} s; table {sizes[0]}, words' GIN {sizes[1]}, trigram GIN {sizes[2]}")
        say(f"searchers: users 1-20, in {heavy_chats / 20:.0f} chats each on average "
            f"(their chats hold {heavy_messages / 20:,.0f} messages each, {heavy_messages / 20 / count:.1%} of all)")

        # Words of every frequency band, in the three languages (ranks 1-72 are real
        # words, by language in turn, most common first; then the made-up tail).
        words = {rank: word for rank, word in vocab}
        bands = {
            "very common (ranks 1-6)": [words[r] for r in range(1, 7)],
            "common (ranks 10-40)": [words[r] for r in (10, 14, 20, 27, 33, 40)],
            "mid (ranks 60-300)": [words[r] for r in (60, 72, 100, 150, 220, 300)],
            "rare (ranks 1000-5000)": [words[r] for r in (1000, 1500, 2500, 3500, 4500, 5000)],
        }
        with connection.cursor() as cursor:
            for band, band_words in bands.items():
                cursor.execute(
                    "SELECT count(*) FROM chats_message WHERE to_tsvector('simple', content) @@ "
                    "to_tsquery('simple', %s)", [" | ".join(f"'{w}':*" for w in band_words)])
                say(f"  {band}: {', '.join(band_words)} (together in {cursor.fetchone()[0]:,} messages)")
        timings: dict[str, list[float]] = {band: [] for band in bands}
        hits = []
        for band, band_words in bands.items():
            for user_id in range(1, 21):
                for word in band_words:
                    for attempt in range(args.repeat + 1):
                        t0 = time.perf_counter()
                        page, has_more = message_search(user_id=user_id, query=word, limit=20)
                        [shapes.search_hit_data(m) for m in page]
                        elapsed = (time.perf_counter() - t0) * 1000
                        if attempt:  # the first one warms the cache
                            timings[band].append(elapsed)
                    hits.append(len(page))
        everything = [t for ts in timings.values() for t in ts]
        say(f"one-word search, first page of 20 with snippets ({len(everything)} timed queries, "
            f"{statistics.mean(hits):.1f} hits per page on average):")
        say(f"  all: p50 {percentile(everything, 50):.1f} ms, p95 {percentile(everything, 95):.1f} ms, "
            f"p99 {percentile(everything, 99):.1f} ms, max {max(everything):.1f} ms")
        for band, ts in timings.items():
            say(f"  {band}: p50 {percentile(ts, 50):.1f} ms, p99 {percentile(ts, 99):.1f} ms")
        t0 = time.perf_counter()
        for user_id in range(1, 21):
            message_search(user_id=user_id, query="여행사진", limit=20)
        say(f"  a spaceless phrase (trigram, '여행사진'): {(time.perf_counter() - t0) * 1000 / 20:.1f} ms on average")

        # The send, with and without the indexes.
        author = User.objects.get(id=1)
        chat_ids = list(author.memberships.values_list("chat_id", flat=True))

        def sends(label: str) -> None:
            times = []
            for i in range(args.sends):
                t0 = time.perf_counter()
                message_send(actor=author, chat_id=chat_ids[i % len(chat_ids)],
                             content=f"bench {label} {i} climbing tomorrow 주말에 등산 on se retrouve au café")
                times.append((time.perf_counter() - t0) * 1000)
            say(f"  {label}: mean {statistics.mean(times):.2f} ms, p50 {percentile(times, 50):.2f} ms, "
                f"p99 {percentile(times, 99):.2f} ms")

        say(f"message_send, {args.sends} sends each (in-process, the service's statements and commit):")
        sends("warm-up, both indexes")
        sends("both indexes")
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX chats_message_trgm_idx")
        sends("words' index only")
        with connection.cursor() as cursor:
            cursor.execute("DROP INDEX chats_message_search_idx")
        sends("no search index")
        sends("no search index again")
        with connection.cursor() as cursor:
            for sql in SEARCH_INDEXES.values():
                cursor.execute(sql)
        sends("warm-up, both indexes rebuilt")
        sends("both indexes again")
    finally:
        cluster.stop()
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    out = results / f"search-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.txt"
    out.write_text("\n".join(lines) + "\n")
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
