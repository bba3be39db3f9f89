"""A WSGI application that takes SLOW_WSGI_SECONDS (default 2) to load and then, as
`chatserver.wsgi` does, calls `exit_with_parent`: what a granian worker does when its
main process is killed while it is still importing Django (tests/chatserver/
test_webserver.py). Standard library and chatserver.webserver only: no Django here."""

import os
import time

from chatserver.webserver import exit_with_parent

time.sleep(float(os.environ.get("SLOW_WSGI_SECONDS", "2")))
exit_with_parent()


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
