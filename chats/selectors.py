"""Reads about chats. Every fetch that checks access says so and answers "not found"
both for a chat that does not exist and for one the caller is not in."""

from bisect import bisect_left, bisect_right
from functools import reduce
from operator import or_

from django.db.models import Count, F, Q, Value, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from chats import shapes
from chats.errors import ChatNotFound, InvalidCursor, MessageNotFound
from chats.models import Membership, Mention, Message

# What a message's API object reads beyond its row, joined in the same query: its file and
# the author of the message it forwards.
MESSAGE_RELATED = ("attachment", "forwarded_from")


def membership_get_for_member(*, chat_id: int, user_id: int) -> Membership:
    """The caller's membership, with its chat; ChatNotFound when there is none."""
    membership = (
        Membership.objects.select_related("chat").filter(chat_id=chat_id, user_id=user_id).first()
    )
    if membership is None:
        raise ChatNotFound()
    return membership


def chat_is_member(*, chat_id: int, user_id: int) -> bool:
    """Whether the user is a member of the chat now (the (chat, user) unique index)."""
    return Membership.objects.filter(chat_id=chat_id, user_id=user_id).exists()


def chat_members(*, chat_id: int) -> list[Membership]:
    return list(
        Membership.objects.filter(chat_id=chat_id).select_related("user", "chat").order_by("joined_at", "id")
    )



def message_page(
    *, chat_id: int, before: int | None, after: int | None, limit: int, from_seq: int = 0
) -> tuple[list[Message], bool]:
    """A page of history, oldest first, and whether there is more beyond it.

    With `after`, the page starts right after that message and `has_more` says whether
    newer ones follow (up to `before`, when given). Otherwise it is the newest page below
    `before` (or the newest of all) and `has_more` says whether older ones precede it.
    Cursors are message ids of this chat (0 for "the beginning"); they are turned into
    seqs, so every page is a range scan of the (chat, seq) index. `from_seq`: the
    reader sees only messages after it (`history_start_seq`).
    """
    cursors = {c for c in (before, after) if c}
    seqs = dict(
        Message.objects.filter(chat_id=chat_id, id__in=cursors).values_list("id", "seq")
    ) if cursors else {}
    if cursors - seqs.keys():
        raise InvalidCursor()
    messages = Message.objects.filter(chat_id=chat_id).select_related(*MESSAGE_RELATED)
    if from_seq:
        messages = messages.filter(seq__gt=from_seq)
    if before is not None:
        messages = messages.filter(seq__lt=seqs[before])
    if after is not None:
        if after:
            messages = messages.filter(seq__gt=seqs[after])
        page = list(messages.order_by("seq")[: limit + 1])
        return page[:limit], len(page) > limit
    page = list(messages.order_by("-seq")[: limit + 1])
    has_more = len(page) > limit
    page = page[:limit]
    page.reverse()
    return page, has_more


class UnreadCounter:
    """How many members of a chat have not read a message, from their read pointers.

    The pointers are sorted once, then each message costs a binary search, so a
    1,000-member group costs no more than its one list of pointers. A member's pointer
    starts at the chat's seq when it joined, so it never counts for older messages; a
    user with read receipts off shows as having read nothing since it joined; deleted
    messages count 0.
    """

    def __init__(self, pointers) -> None:
        """`pointers`: (last_read_seq, joined_seq, read_receipts) of each member."""
        self.seqs = sorted(read if receipts else joined for read, joined, receipts in pointers)

    @classmethod
    def of_members(cls, members: list[Membership]) -> "UnreadCounter":
        return cls((m.last_read_seq, m.joined_seq, m.user.read_receipts) for m in members)

    def count(self, message: Message) -> int:
        return 0 if message.deleted else bisect_left(self.seqs, message.seq)


def message_unread_counts(*, chat_id: int, messages: list[Message]) -> dict[int, int]:
    """For each message, how many members have not read it yet (one small query)."""
    if not messages:
        return {}
    counter = UnreadCounter(
        Membership.objects.filter(chat_id=chat_id).values_list(
            "last_read_seq", "joined_seq", "user__read_receipts"
        )
    )
    return {m.id: counter.count(m) for m in messages}


def messages_annotate(*, chat_id: int, messages: list[Message]) -> list[Message]:
    """Give messages of one chat what their API object needs beyond their row
    (`unread_count`, `reply_original`: see `chats.shapes.message_output`), in two queries
    whatever their number."""
    unread = message_unread_counts(chat_id=chat_id, messages=messages)
    originals = _reply_originals(messages)
    for m in messages:
        m.unread_count = unread[m.id]
        m.reply_original = originals.get(m.reply_to_id)
    return messages


def messages_data(*, chat_id: int, messages: list[Message]) -> list[dict]:
    """The API objects of messages of one chat."""
    return [shapes.message_output(m) for m in messages_annotate(chat_id=chat_id, messages=messages)]


def _reply_originals(messages: list[Message]) -> dict[int, Message]:
    reply_ids = {m.reply_to_id for m in messages if m.reply_to_id}
    return Message.objects.in_bulk(reply_ids) if reply_ids else {}


def sync(*, user_id: int, chats: dict[int, int], limit: int) -> dict:
    """What changed for a user who was away, in four queries whatever the number of chats.

    `chats` maps each chat the client knows to the highest version it has of it. Answers
    `changed`: for each of those chats that changed since, the messages sent, edited or
    deleted after that version (oldest change first, at most `limit`; `has_more` says to
    ask again from the returned `version`) and its members; `removed`: the chats it is no
    longer in; `new`: the chats it joined that the client did not name (fetch their
    history with GET .../messages/). Versions are per chat and gapless, so nothing
    committed can be skipped.
    """
    memberships = {m.chat_id: m for m in Membership.objects.filter(user_id=user_id).select_related("chat")}
    removed = sorted(cid for cid in chats if cid not in memberships)
    changed = [memberships[cid] for cid, v in chats.items() if cid in memberships and memberships[cid].chat.version > v]
    new = [m for cid, m in memberships.items() if cid not in chats]

    changes: dict[int, list[Message]] = {m.chat_id: [] for m in changed}
    if changed:
        after = reduce(or_, (Q(chat_id=m.chat_id, version__gt=chats[m.chat_id]) for m in changed))
        first_changes = (
            Message.objects.filter(after)
            .select_related(*MESSAGE_RELATED)
            .annotate(rank=Window(RowNumber(), partition_by=F("chat_id"), order_by=F("version").asc()))
            .filter(rank__lte=limit + 1)
            .order_by("chat_id", "version")
        )
        for message in first_changes:
            changes[message.chat_id].append(message)

    members: dict[int, list[Membership]] = {m.chat_id: [] for m in changed + new}
    if members:
        for member in Membership.objects.filter(chat_id__in=members).select_related("user").order_by("joined_at", "id"):
            members[member.chat_id].append(member)
    originals = _reply_originals([m for msgs in changes.values() for m in msgs])

    changed_out = []
    for membership in changed:
        chat, page = membership.chat, changes[membership.chat_id]
        has_more = len(page) > limit
        page = page[:limit]
        counter = UnreadCounter.of_members(members[chat.id])
        changed_out.append(
            {
                "id": chat.id,
                "version": page[-1].version if has_more else chat.version,
                "messages": [
                    shapes.message_data(
                        m,
                        unread_count=counter.count(m),
                        reply_preview=shapes.reply_preview(originals.get(m.reply_to_id)),
                    )
                    for m in page
                ],
                "has_more": has_more,
                "members": [shapes.member_data(m) for m in members[chat.id]],
            }
        )
    return {
        "changed": changed_out,
        "removed": removed,
        "new": [shapes.chat_data(m.chat, members[m.chat_id]) for m in new],
    }


def message_get_in_chat(*, chat_id: int, message_id: int) -> Message:
    message = Message.objects.filter(chat_id=chat_id, id=message_id).select_related(*MESSAGE_RELATED).first()
    if message is None:
        raise MessageNotFound()
    return message



def chat_list_queryset(*, user_id: int, archived: bool = False):
    """The user's memberships: pinned chats first (the latest pinned first), then most
    recent activity first, without the direct chats it hid (until a newer message brings
    them back) and without its archived chats; with `archived`, its archived chats only.

    A chat archived at seq n is archived while it has no message after n, or while it is
    muted (a muted archived chat stays archived): nothing is written when a message
    brings it back, so the send costs nothing for it."""
    visible = Q(hidden_at_seq__isnull=True) | Q(chat__last_seq__gt=F("hidden_at_seq"))
    now = timezone.now()
    is_archived = Q(archived_at_seq__isnull=False) & (
        Q(chat__last_seq__lte=F("archived_at_seq")) | Q(muted_until__gt=now)
    )
    return (
        Membership.objects.filter(user_id=user_id)
        .filter(visible)
        .filter(is_archived if archived else ~is_archived)
        .select_related("chat")
        .order_by(F("pinned_at").desc(nulls_last=True), "-chat__activity_at", "-chat_id")
    )


def chat_unread_counts(*, chat, memberships: list[Membership]) -> dict[int, int]:
    """Each of these members' unread count of one chat, by user id: the chat's newest seq
    minus the member's read pointer minus the deleted messages after it, the rule of
    `chat_summaries` (which counts many chats at once), in one query."""
    low = min((m.last_read_seq for m in memberships), default=chat.last_seq)
    deleted = sorted(
        Message.objects.filter(chat=chat, deleted=True, seq__gt=low).values_list("seq", flat=True)
    )
    counts = {}
    for m in memberships:
        behind = chat.last_seq - m.last_read_seq
        deleted_after = len(deleted) - bisect_right(deleted, m.last_read_seq)
        counts[m.user_id] = max(behind - deleted_after, 0)
    return counts


def chat_summaries(*, memberships: list[Membership]) -> list[dict]:
    """Each chat of a list page with its members, last message and the caller's unread
    and unread-mention counts, in four queries whatever the page's size and the chats'
    lengths (three when the caller has read everything).

    Unread = newest seq - the caller's read pointer - deleted messages after the pointer
    (the caller's own messages are never after its pointer: sending moves it). Deleted
    messages are counted through a small partial index, so a chat of 100k unread
    messages costs no more than one of ten.
    """
    if not memberships:
        return []
    chat_ids = [m.chat_id for m in memberships]
    members: dict[int, list[Membership]] = {cid: [] for cid in chat_ids}
    for member in (
        Membership.objects.filter(chat_id__in=chat_ids).select_related("user").order_by("joined_at", "id")
    ):
        members[member.chat_id].append(member)

    with_messages = [m for m in memberships if m.chat.last_seq > 0]
    last_messages = {}
    if with_messages:
        newest = reduce(or_, (Q(chat_id=m.chat_id, seq=m.chat.last_seq) for m in with_messages))
        last_messages = {msg.chat_id: msg for msg in Message.objects.filter(newest).select_related(*MESSAGE_RELATED)}
    deleted_unread, mentions_unread = {}, {}
    behind = [m for m in memberships if m.chat.last_seq > m.last_read_seq]
    if behind:
        after_pointer = reduce(or_, (Q(chat_id=m.chat_id, seq__gt=m.last_read_seq) for m in behind))
        # Deleted messages and mentions of the caller after its pointer (deleted messages
        # have no mention rows left), in one query.
        deleted = (Message.objects.filter(after_pointer, deleted=True)
                   .values("chat_id").annotate(n=Count("id"), mention=Value(False)))
        mentions = (Mention.objects.filter(after_pointer, user_id=memberships[0].user_id)
                    .values("chat_id").annotate(n=Count("id"), mention=Value(True)))
        for chat_id, n, mention in deleted.union(mentions, all=True).values_list("chat_id", "n", "mention"):
            (mentions_unread if mention else deleted_unread)[chat_id] = n

    summaries = []
    now = timezone.now()
    for membership in memberships:
        chat = membership.chat
        last = last_messages.get(chat.id)
        last_data = None
        if last is not None:
            last_data = shapes.message_data(
                last, unread_count=UnreadCounter.of_members(members[chat.id]).count(last)
            )
        unread = chat.last_seq - membership.last_read_seq - deleted_unread.get(chat.id, 0)
        summaries.append(
            {
                **shapes.chat_data(chat, members[chat.id]),
                "last_message": last_data,
                "unread_count": max(unread, 0),
                "mention_count": mentions_unread.get(chat.id, 0),
                **shapes.mute_data(membership, now=now),
                **shapes.list_data(membership, now=now),
            }
        )
    return summaries


# --- pins ---


def message_pins(*, chat_id: int) -> list[Message]:
    """A chat's pinned messages, the latest pinned first (at most `errors.PINS_MAX`: no
    page), annotated for `shapes.message_output`."""
    pins = list(
        Message.objects.filter(chat_id=chat_id, pinned_at__isnull=False)
        .select_related(*MESSAGE_RELATED)
        .order_by("-pinned_at", "-id")
    )
    return messages_annotate(chat_id=chat_id, messages=pins)

# --- History visibility and search ------------------------------------------------------


def history_start_seq(membership: Membership) -> int:
    """The rule of what a member may read of its chat's history, in one place: the
    messages after this seq. History is shared: every member, whatever its role, reads
    the whole history of its chats, also what was sent before it joined (docs/http-api.md,
    "Group roles"), so 0. History pages and search both ask here."""
    return 0


def message_search(
    *, user_id: int, query: str, chat_id: int | None = None, before: int | None = None, limit: int = 20
) -> tuple[list[Message], bool]:
    """The messages `user_id` can read now that match `query`, newest first, and whether
    older ones match too (`before`: only messages older than that id).

    Readable now: in a chat the user is a member of (nothing from chats it left or was
    kicked from), after `history_start_seq`, not deleted. Matching: see `chats.search`.
    On PostgreSQL, words go through the GIN index on `to_tsvector('simple', content)`
    and spaceless scripts also through the trigram index on `content` (migration chats
    0004); on SQLite, through the FTS5 word and trigram tables (migration chats 0006),
    the same matches. Substrings shorter than 3 characters are LIKE over the caller's
    chats on both. Two queries (the caller's memberships, the page), three for text in
    spaceless scripts (words and substrings apart, merged). ChatNotFound for a `chat_id`
    not the caller's.
    """
    from django.db import connection
    from django.db.models import BooleanField
    from django.db.models.expressions import RawSQL

    from chats import search

    memberships = Membership.objects.filter(user_id=user_id)
    if chat_id is not None:
        memberships = memberships.filter(chat_id=chat_id)
    memberships = list(memberships.only("id", "chat_id", "joined_seq"))
    if chat_id is not None and not memberships:
        raise ChatNotFound()
    words = search.words_of(query)
    phrase = " ".join(query.split())
    substring = search.is_spaceless(phrase)
    if not memberships or not (words or substring):
        return [], False

    starts: dict[int, list[int]] = {}
    for m in memberships:
        starts.setdefault(history_start_seq(m), []).append(m.chat_id)
    readable = reduce(or_, (
        Q(chat_id__in=ids) if start == 0 else Q(chat_id__in=ids, seq__gt=start)
        for start, ids in starts.items()
    ))
    messages = Message.objects.filter(readable, deleted=False)
    if before is not None:
        messages = messages.filter(id__lt=before)

    columns = ("id", "chat_id", "seq", "author_id", "type", "content", "created_at", "edited_at")
    if connection.vendor == "postgresql":
        # Two queries at most, each the newest limit + 1 of its own index, merged: the
        # words' GIN index and the trigram one do not combine well in one plan (an OR
        # keeps neither side's LIMIT).
        page = []
        if words:
            # The very expression of the GIN index, so that the planner uses it.
            page += messages.filter(RawSQL(
                "to_tsvector('simple', content) @@ to_tsquery('simple', %s)", [search.tsquery_of(words)],
                output_field=BooleanField(),
            )).only(*columns).order_by("-id")[: limit + 1]
        if substring:
            inside = messages.filter(
                RawSQL("content ILIKE %s", [search.like_pattern(phrase)], output_field=BooleanField())
            ).only(*columns)
            if len(phrase) < 3:
                # No trigram in it, so the trigram index cannot narrow it: read the
                # caller's chats' messages instead (ordering by `id + 0` keeps the planner
                # off walking the whole table backwards by id, which it would pick for
                # the LIMIT, and which takes seconds for a pattern it cannot estimate).
                inside = inside.order_by((F("id") + 0).desc())
            else:
                inside = inside.order_by("-id")
            page += inside[: limit + 1]
        page = sorted({m.id: m for m in page}.values(), key=lambda m: m.id, reverse=True)[: limit + 1]
    else:
        # SQLite: the same two queries, through FTS5 (see chats/search.py). The rowids
        # of an FTS5 table are the messages' ids (content_rowid='id').
        page = []
        table = Message._meta.db_table
        match = search.fts5_query_of(words)
        if match:
            page += messages.filter(RawSQL(
                f"{table}.id IN (SELECT rowid FROM {search.FTS_WORDS} WHERE {search.FTS_WORDS} MATCH %s)",
                [match], output_field=BooleanField(),
            )).only(*columns).order_by("-id")[: limit + 1]
        if substring:
            if len(phrase) >= 3:
                inside = messages.filter(RawSQL(
                    f"{table}.id IN (SELECT rowid FROM {search.FTS_TRIGRAMS} WHERE {search.FTS_TRIGRAMS} MATCH %s)",
                    [search.fts5_string(phrase)], output_field=BooleanField(),
                ))
            else:
                # No trigram in it (the trigram table matches nothing then): LIKE,
                # case-insensitive for ASCII letters only (the scripts in question have
                # no case).
                inside = messages.filter(content__icontains=phrase)
            page += inside.only(*columns).order_by("-id")[: limit + 1]
        page = sorted({m.id: m for m in page}.values(), key=lambda m: m.id, reverse=True)[: limit + 1]
    for message in page:
        message.search_words, message.search_substring = words or [phrase], substring
    return page[:limit], len(page) > limit
