"""`manage.py front_prepare`: make DATA_DIR/front/ ready for nginx and print its config path.

`make run` starts nginx on it (Procfile: `front`) and granian on its socket (`web`).
"""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from chatserver import frontconf


class Command(BaseCommand):
    help = "Create DATA_DIR/front/ and render front/nginx.conf into it; print its path."

    def handle(self, *args, **options) -> None:
        tls = None
        if bool(settings.HTTPS_CERT) != bool(settings.HTTPS_KEY):
            raise CommandError("set both HTTPS_CERT and HTTPS_KEY, or neither")
        if settings.HTTPS_CERT:
            tls = (Path(settings.HTTPS_CERT), Path(settings.HTTPS_KEY))
            for path in tls:
                if not path.is_file():
                    raise CommandError(f"{path}: no such file")
        try:
            conf = frontconf.prepare(
                data_dir=settings.DATA_DIR,
                port=settings.HTTP_PORT,
                bind=settings.HTTP_BIND,
                max_attachment=settings.ATTACHMENT_MAX_SIZE,
                tls=tls,
                behind_tls_proxy=settings.BEHIND_TLS_PROXY,
                # RabbitMQ asks Django about every login and subscription (chatserver/broker_auth.py).
                broker_auth_port=settings.BROKER_AUTH_PORT if settings.BROKER == "rabbitmq" else None,
            )
        except (ValueError, PermissionError, RuntimeError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(str(conf))
