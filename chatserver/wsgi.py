"""The WSGI application, as each of granian's workers loads it (Procfile: `web`); what it
changes around Django's handler, and why: chatserver.webserver."""

import os

from django.core.wsgi import get_wsgi_application

from chatserver.webserver import exit_with_parent, without_process_environment

exit_with_parent()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatserver.settings")
application = without_process_environment(get_wsgi_application(), dict(os.environ))
