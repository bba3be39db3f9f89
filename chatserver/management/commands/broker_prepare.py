"""`manage.py broker_prepare`: make DATA_DIR/broker/ ready and print the broker's config path.

`make run` starts Mosquitto with the printed file: `mosquitto -c "$(manage.py broker_prepare)"`.
"""

import os

from django.conf import settings
from django.core.management.base import BaseCommand

from chatserver import brokerconf


class Command(BaseCommand):
    help = (
        "Create DATA_DIR/broker/ (dynamic-security JSON with the admin account, owned by "
        "the mosquitto user) and render broker/mosquitto.conf into it; print its path."
    )

    def handle(self, *args, **options) -> None:
        conf = brokerconf.prepare(
            data_dir=settings.DATA_DIR,
            mqtt_port=settings.MQTT_PORT,
            ws_port=settings.MQTT_WS_PORT,
            admin_username=settings.MQTT_ADMIN_USERNAME,
            admin_password=settings.MQTT_ADMIN_PASSWORD,
            # Empty: every interface (phones connect from outside); 127.0.0.1 for local only.
            bind=os.environ.get("MQTT_BIND", "").strip(),
        )
        self.stdout.write(str(conf))
