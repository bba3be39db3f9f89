"""The suite's settings: the shipped ones, with what only tests want.

pytest.ini names this module; the processes the suite starts (granian, the workers) get
the same values through their environment (tests/support/stack.py).
"""

import os

# Rate limits no test meets by accident, here and in the processes the suite starts (which
# import this module too); the tests of the limits set their own (tests/chatserver/
# test_rate_limits.py). The environment still wins.
for _name in ("AUTH_THROTTLE_RATE", "LOGIN_FAILURE_THROTTLE_RATE", "SEND_THROTTLE_RATE",
              "UPLOAD_THROTTLE_RATE", "FRIEND_REQUEST_THROTTLE_RATE"):
    os.environ.setdefault(_name, "1000000/minute")
os.environ.setdefault("SEND_THROTTLE_BURST", "1000000")

from chatserver.settings import *  # noqa: E402, F403

# The real hasher costs ~0.5 s a call by design; the suite signs up hundreds of users.
# (`make bench` keeps the real one, outside its timed window.)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# Back-pressure past 10 s, not the shipped half second: the suite's two passes share two
# cores with everything they start, and a test posting in a loop must not meet a 503
# `overloaded` by accident. The tests of back-pressure set their own (test_faults.py,
# test_partitions.py).
INGEST_MAX_OUTBOX_AGE = env_float("INGEST_MAX_OUTBOX_AGE", 10.0)  # noqa: F405 (chatserver.settings)

# Every event the suite queues is checked against docs/asyncapi.yaml when it is made.
OUTBOX_CHECK_SCHEMAS = True

# The session's broker has no TLS listeners (tests/chatserver/test_tls.py makes one that
# has); the processes the suite starts are told which broker they have (server_env).
if "MQTT_TLS" not in os.environ:
    MQTT_TLS = False
