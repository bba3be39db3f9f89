"""`manage.py broker_prepare`: make DATA_DIR/broker/ ready and print the broker's config path.

`make run` starts Mosquitto with the printed file: `mosquitto -c "$(manage.py broker_prepare)"`.
With TLS on (the default), the certificate is MQTT_TLS_CERT / MQTT_TLS_KEY, or one of a
local CA made once under DATA_DIR/tls/ (chatserver/tls.py); where that CA is goes to
stderr, for phones and `chat-sim --ca`.
"""

import os
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chatserver import brokerconf
from chatserver.tls import ServerTls, local_server_tls


class Command(BaseCommand):
    help = (
        "Create DATA_DIR/broker/ (dynamic-security JSON with the admin account, owned by "
        "the mosquitto user), the TLS certificate if none is configured, and render "
        "broker/mosquitto.conf into it; print its path."
    )

    def handle(self, *args, **options) -> None:
        tls = None
        if settings.MQTT_TLS:
            if bool(settings.MQTT_TLS_CERT) != bool(settings.MQTT_TLS_KEY):
                raise CommandError("set both MQTT_TLS_CERT and MQTT_TLS_KEY, or neither")
            if settings.MQTT_TLS_CERT:
                tls = ServerTls(cert=Path(settings.MQTT_TLS_CERT), key=Path(settings.MQTT_TLS_KEY))
                for path in (tls.cert, tls.key):
                    if not path.is_file():
                        raise CommandError(f"{path}: no such file")
            else:
                tls = local_server_tls(settings.DATA_DIR / "tls", extra_names=[settings.MQTT_PUBLIC_HOST])
                print(f"MQTT over TLS on port {settings.MQTT_TLS_PORT} (wss: {settings.MQTT_WSS_PORT}), "
                      f"certificate of a local CA: phones and chat-sim --ca must trust {tls.ca}",
                      file=sys.stderr)
        conf = brokerconf.prepare(
            data_dir=settings.DATA_DIR,
            mqtt_port=settings.MQTT_PORT,
            ws_port=settings.MQTT_WS_PORT,
            admin_username=settings.MQTT_ADMIN_USERNAME,
            admin_password=settings.MQTT_ADMIN_PASSWORD,
            # Empty: every interface (phones connect from outside); 127.0.0.1 for local only.
            bind=os.environ.get("MQTT_BIND", "").strip(),
            tls=tls,
            tls_ports=(settings.MQTT_TLS_PORT, settings.MQTT_WSS_PORT) if tls else None,
            plaintext=settings.MQTT_PLAINTEXT,
            login_limit=brokerconf.LoginLimit(
                failures=settings.MQTT_LOGIN_FAILURES,
                window=settings.MQTT_LOGIN_WINDOW,
                cooldown=settings.MQTT_LOGIN_COOLDOWN,
            ),
        )
        self.stdout.write(str(conf))
