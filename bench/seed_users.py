"""Sign up many users for the bench before its timed window: `BenchStack.seed_users`.

Reads {"names": [...], "password": "..."} on stdin, writes {name: token} on stdout. Runs
with the stack's environment (its settings, database and broker; the relay must be up).

Each user goes through the real signup, accounts.services.user_signup (validation, user,
first device, token, broker accounts queued and waited for), in a few threads. One thing
differs: the password is hashed once, by the shipped hasher (Django's default, PBKDF2 at
its full iteration count), and that hash is what every user stores. So a login against
any of them costs what it costs in production, the server runs with its stock hasher, and
set-up does not spend ~0.4 s of CPU per user on hashes nobody measures.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

THREADS = 8  # as many as chat-sim signs up at once over HTTP: see the report


def main() -> int:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import get_hasher, make_password
    from django.db import connection

    from accounts.services import user_signup

    request = json.load(sys.stdin)
    password = request["password"]
    if getattr(settings, "PASSWORD_HASHERS", None) and "MD5" in settings.PASSWORD_HASHERS[0]:
        print("seed_users: the stack's hasher is not the shipped one", file=sys.stderr)
    encoded = make_password(password)  # the shipped hasher, full cost, once
    print(f"seed_users: {get_hasher().algorithm} hash made once for {len(request['names'])} users",
          file=sys.stderr)
    User = get_user_model()

    def set_password(self, raw_password):
        self.password = encoded if raw_password == password else make_password(raw_password)
        self._password = raw_password

    User.set_password = set_password

    def signup(name: str) -> tuple[str, str]:
        try:
            _, token = user_signup(username=name, password=password)
            return name, token
        finally:
            connection.close()

    with ThreadPoolExecutor(THREADS) as pool:
        tokens = dict(pool.map(signup, request["names"]))
    json.dump(tokens, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
