from django.core.management.base import BaseCommand

from chatserver.relay import run_forever


class Command(BaseCommand):
    help = "Publish the outbox to the MQTT broker (one long-lived connection), until SIGTERM."

    def handle(self, *args, **options):
        run_forever()
