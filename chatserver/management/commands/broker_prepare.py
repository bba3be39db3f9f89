"""`manage.py broker_prepare`: make DATA_DIR/broker/ ready and print the broker's config path.

BROKER=mosquitto: renders DATA_DIR/broker/mosquitto.conf (chatserver/brokerconf.py);
`make run` starts Mosquitto with it (scripts/broker.sh). BROKER=rabbitmq: prepares the
RabbitMQ node's directory RABBITMQ_NODE_DIR (DATA_DIR/broker/rabbitmq/, chatserver/rabbitconf.py)
and prints its rabbitmq.conf; scripts/broker.sh sources node.env beside it and starts the node.
With TLS on (the default), the certificate is MQTT_TLS_CERT / MQTT_TLS_KEY, or one of a
local CA made once under DATA_DIR/tls/ (chatserver/tls.py); where that CA is goes to
stderr, for phones and `chat-sim --ca`.
"""

import os
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chatserver import brokerconf, rabbitconf
from chatserver.tls import ServerTls, local_server_tls


class Command(BaseCommand):
    help = (
        "Create DATA_DIR/broker/ (dynamic-security JSON with the admin account, owned by "
        "the mosquitto user), the TLS certificate if none is configured, and render "
        "broker/mosquitto.conf into it; print its path. With BROKER=rabbitmq: the RabbitMQ "
        "node's directory DATA_DIR/broker/rabbitmq/ (config, definitions, plugins, node.env)."
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
        listeners = dict(
            mqtt_port=settings.MQTT_PORT,
            ws_port=settings.MQTT_WS_PORT,
            # Empty: every interface (phones connect from outside); 127.0.0.1 for local only.
            bind=os.environ.get("MQTT_BIND", "").strip(),
            tls=tls,
            tls_ports=(settings.MQTT_TLS_PORT, settings.MQTT_WSS_PORT) if tls else None,
            plaintext=settings.MQTT_PLAINTEXT,
            admin_username=settings.MQTT_ADMIN_USERNAME,
            admin_password=settings.MQTT_ADMIN_PASSWORD,
        )
        if settings.BROKER == "rabbitmq":
            self.prepare_rabbitmq(listeners)
            return
        conf = brokerconf.prepare(
            data_dir=settings.DATA_DIR,
            login_limit=brokerconf.LoginLimit(
                failures=settings.MQTT_LOGIN_FAILURES,
                window=settings.MQTT_LOGIN_WINDOW,
                cooldown=settings.MQTT_LOGIN_COOLDOWN,
            ),
            **listeners,
        )
        self.stdout.write(str(conf))

    def prepare_rabbitmq(self, listeners: dict) -> None:
        node_dir = settings.RABBITMQ_NODE_DIR
        try:
            rabbitconf.prepare(
                node_dir=node_dir,
                nodename=settings.RABBITMQ_NODENAME,
                ports=rabbitconf.NodePorts(
                    amqp=settings.RABBITMQ_AMQP_PORT,
                    management=settings.RABBITMQ_MANAGEMENT_PORT,
                    dist=settings.RABBITMQ_DIST_PORT,
                    epmd=settings.RABBITMQ_EPMD_PORT,
                ),
                auth_url=rabbitconf.auth_url(port=settings.BROKER_AUTH_PORT, secret=settings.BROKER_AUTH_SECRET),
                auth_cache_ttl=settings.RABBITMQ_AUTH_CACHE_TTL,
                cookie=settings.RABBITMQ_ERLANG_COOKIE,
                cluster_nodes=tuple(settings.RABBITMQ_CLUSTER_NODES),
                erl_args=settings.RABBITMQ_ERL_ARGS,
                **listeners,
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(str(node_dir / rabbitconf.CONF_NAME))
