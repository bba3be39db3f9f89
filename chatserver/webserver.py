"""What the web tier's processes need from the WSGI server that serves them (granian,
Procfile: `web`), applied by `chatserver.wsgi` in each of its workers.

- granian starts every request's environ from a copy of the server process's environment,
  as CGI did (and as wsgiref still does). Ours holds the database's URL with its password
  and settings named like request headers: `HTTP_PORT` would read as a `Port:` header the
  phone never sent. `without_process_environment` takes them out again.
- granian's workers outlive a main process that was killed (SIGKILL, a crash): they go on
  holding their database connections, on a socket the next main process replaces.
  `exit_with_parent` has the kernel kill such a worker (SIGKILL: a SIGTERM that comes
  while granian's worker is still loading is lost, and it serves on), and a worker whose
  main process went while it was still loading exits there. Requests under way in it are
  cut: their transactions roll back, nginx answers 503 `unavailable`, and the phone's
  retry with the same `client_id` makes no second message. A normal shutdown never gets
  here: granian's main process stops its workers before it exits.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping

logger = logging.getLogger(__name__)

# What the server itself sets, whatever the process's environment says.
REQUEST_KEYS = frozenset({
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE", "CONTENT_LENGTH",
    "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "SERVER_SOFTWARE", "REMOTE_ADDR", "REMOTE_PORT",
    "GATEWAY_INTERFACE",
})
# <linux/prctl.h>
PR_SET_PDEATHSIG = 1


def without_process_environment(app: Callable, process_environment: Mapping[str, str]) -> Callable:
    """`app`, given environs without what was copied into them from `process_environment`.

    A name in both the environ and the process's environment, with the same value, was
    copied (a request's own header of the same name and value is dropped with it: only
    the settings named `HTTP_*` can collide, and no client has a reason to send those).
    A request header whose value differs from the setting's stays: it is the request's.
    """
    inherited = tuple((key, value) for key, value in process_environment.items() if key not in REQUEST_KEYS)

    def application(environ: dict, start_response: Callable) -> Iterable[bytes]:
        for key, value in inherited:
            if environ.get(key) == value:
                del environ[key]
        return app(environ, start_response)

    return application


def exit_with_parent() -> None:
    """Have the kernel kill this process when its parent exits (Linux; elsewhere nothing),
    and exit at once if the parent is gone already.

    A granian worker calls this while it loads the application, which takes a second or
    more after the fork: its main process may have been killed meanwhile, and the kernel
    would then never send the signal. So the parent is the one that started the worker
    (multiprocessing's record of it, taken at the fork), not whoever is its parent now
    (the init process, once it is orphaned)."""
    if not sys.platform.startswith("linux"):
        return
    started_by = multiprocessing.parent_process()
    parent = started_by.pid if started_by is not None else os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        return
    if os.getppid() != parent:
        # Gone before the call: no signal will come. Nothing is served or open yet.
        logger.warning("the web server's main process (%s) is gone: this worker stops", parent)
        os._exit(0)
