from django.core.management.base import BaseCommand

from chatserver import workers


class Command(BaseCommand):
    help = (
        "Publish the outbox to the MQTT broker (one long-lived connection), until SIGTERM. "
        "The same as `manage.py worker relay`."
    )

    def handle(self, *args, **options):
        workers.run_forever(name="relay")
