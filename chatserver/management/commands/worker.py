from django.core.management.base import BaseCommand

from chatserver import workers


class Command(BaseCommand):
    help = (
        "Run one worker (registered by the apps: see chatserver/workers.py) until SIGTERM or "
        "SIGINT. Each runs in its own process; on PostgreSQL one of each name is active at a "
        "time, and others started stand by."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", choices=sorted(workers.registered()), help="the worker to run")

    def handle(self, *args, name: str, **options):
        workers.run_forever(name=name)
