from django.core.management.base import BaseCommand, CommandError

from chatserver import outbox
from chatserver.models import DeadLetter

PAYLOAD_SHOWN = 60


class Command(BaseCommand):
    help = (
        "List the outbox rows the relay set aside (dead letters): id, failed_at, the "
        "original outbox id, the error and the start of the payload. --replay moves "
        "dead letters back into the outbox under NEW outbox ids, so they go to the end of "
        "the line, behind everything queued since (their order among themselves is kept); "
        "--discard deletes them for good."
    )

    def add_arguments(self, parser):
        action = parser.add_mutually_exclusive_group()
        action.add_argument("--replay", nargs="+", type=int, metavar="ID",
                            help="move these dead letters back into the outbox (at its end)")
        action.add_argument("--replay-all", action="store_true",
                            help="move every dead letter back into the outbox (at its end)")
        action.add_argument("--discard", nargs="+", type=int, metavar="ID",
                            help="delete these dead letters for good")

    def handle(self, *args, replay=None, replay_all=False, discard=None, **options):
        if replay or replay_all:
            ids = None if replay_all else replay
            if ids is not None:
                self._check_known(ids)
            events = outbox.dead_letters_replay(ids=ids)
            self.stdout.write(f"replayed {len(events)}: outbox ids {', '.join(str(e.id) for e in events) or '-'}")
            return
        if discard:
            self._check_known(discard)
            self.stdout.write(f"discarded {outbox.dead_letters_discard(ids=discard)}")
            return
        letters = DeadLetter.objects.order_by("id")
        if not letters:
            self.stdout.write("no dead letters")
            return
        for letter in letters:
            payload = letter.payload if len(letter.payload) <= PAYLOAD_SHOWN else letter.payload[:PAYLOAD_SHOWN] + "..."
            self.stdout.write(
                f"{letter.id}\t{letter.failed_at.isoformat()}\toutbox #{letter.outbox_id}\t{letter.error}\t{payload}"
            )

    def _check_known(self, ids: list[int]) -> None:
        # All or nothing: a typo must not leave half of the ids handled.
        unknown = sorted(set(ids) - set(DeadLetter.objects.filter(id__in=ids).values_list("id", flat=True)))
        if unknown:
            raise CommandError(f"no dead letter with id {', '.join(map(str, unknown))}")
