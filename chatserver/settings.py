"""Settings, read from the environment (every variable is listed in `.env.example`), and
from a `.env` file beside `manage.py` for what the environment does not set (`ENV_FILE`
names another file; `ENV_FILE=` with nothing reads none).

Behaviour differs between deployments only by these values, never by an environment's
name. Secrets are never in the repository: a missing one is generated once under
`DATA_DIR/secrets/` and reused from there.
"""

import os
import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from chatserver import dotenv
from chatserver.broker_addresses import parse_broker_addresses
from chatserver.client_address import parse_networks

BASE_DIR = Path(__file__).resolve().parent.parent

if os.environ.get("ENV_FILE", "x").strip():
    dotenv.load(Path(os.environ.get("ENV_FILE") or BASE_DIR / ".env"))


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    value = env(name)
    if not value:
        return default
    return value.lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = env(name)
    return int(value) if value else default


def env_float(name: str, default: float) -> float:
    value = env(name)
    return float(value) if value else default


DATA_DIR = Path(env("DATA_DIR", str(BASE_DIR / "var"))).resolve()
SECRETS_DIR = DATA_DIR / "secrets"


def secret(name: str, env_name: str, nbytes: int = 32) -> str:
    """The secret from the environment, else from `SECRETS_DIR/<name>`, made once."""
    value = env(env_name)
    if value:
        return value
    path = SECRETS_DIR / name
    if not path.exists():
        # Written whole under a name of its own, then linked into place: when several
        # processes start at once, the first link wins and every process reads that file,
        # never one created and not yet written (O_EXCL alone let others read it empty).
        SECRETS_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
        draft = SECRETS_DIR / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(nbytes) + "\n")
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    value = path.read_text().strip()
    if not value:
        raise ImproperlyConfigured(f"{path} is empty: delete it to have a new {name} made, or set {env_name}")
    return value


SECRET_KEY = secret("django-secret-key", "DJANGO_SECRET_KEY", 50)
DEBUG = env_bool("DEBUG")
ALLOWED_HOSTS = [h.strip() for h in env("ALLOWED_HOSTS", "*").split(",") if h.strip()]

# --- HTTP and HTTPS ---------------------------------------------------------------------
# Phones reach nginx, the front server, on HTTP_BIND:HTTP_PORT (front/nginx.conf); granian
# listens only on a Unix socket behind it. nginx speaks HTTPS there when HTTPS_CERT and
# HTTPS_KEY name a PEM chain and key. Behind a proxy of your own that terminates TLS
# (README: Caddy, a load balancer), set BEHIND_TLS_PROXY=on so that Django takes that
# proxy's X-Forwarded-Proto for the scheme (signed media links, redirects). Either way
# cookies are Secure and HSTS is sent.
HTTP_PORT = env_int("HTTP_PORT", 8000)
HTTP_BIND = env("HTTP_BIND", "0.0.0.0")
HTTPS_CERT = env("HTTPS_CERT")
HTTPS_KEY = env("HTTPS_KEY")
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY")
if HTTPS_CERT or BEHIND_TLS_PROXY:
    # The front server sets this header itself, replacing a client's own.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)

INSTALLED_APPS = [
    # The operators' admin at /admin/ (accounts/admin.py, chats/admin.py, chatserver/admin.py).
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "chatserver",
    "accounts",
    "chats",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (the admin's, the API docs' Swagger UI and ReDoc): see "Static files" below.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "chatserver.middleware.OptionalTrailingSlashMiddleware",
    "django.middleware.common.CommonMiddleware",
    # Sessions, CSRF and messages serve the admin only: the API authenticates by device
    # token (DRF's views are CSRF-exempt, and nothing reads the session lazily set up here).
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # 503 database_unavailable (the error envelope) when a view cannot reach the database.
    "chatserver.middleware.DatabaseUnavailableMiddleware",
]
# Paths work with and without their trailing slash, by rewriting, never by redirecting
# (a redirect would drop a POST body): see OptionalTrailingSlashMiddleware.
APPEND_SLASH = False

ROOT_URLCONF = "chatserver.urls"
WSGI_APPLICATION = "chatserver.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# --- Database ---------------------------------------------------------------------------

DATABASE_URL = env("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'chat.sqlite3'}"
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DB_CONN_MAX_AGE", 600),
        # On: a request checks its persistent connection before using it (a `SELECT 1`,
        # one round trip per request: ~40 us of the web process's CPU, ~20 us of
        # PostgreSQL's, ~60 us of wall time, about 1% of a message POST), so a connection
        # the database dropped (restart, failover, idle timeout) is replaced without
        # failing anybody's request. Off saves that round trip, but the first request on
        # each dropped connection (one per web thread) answers 503
        # database_unavailable with Retry-After: 2 before it is replaced
        # (tests/chatserver/test_outages.py).
        conn_health_checks=env_bool("DB_CONN_HEALTH_CHECKS", True),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE takes the write lock at BEGIN, so a read-then-write transaction cannot
    # fail halfway with "database is locked" (SQLite has no SELECT ... FOR UPDATE).
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0 if DATABASES["default"]["NAME"] == ":memory:" else 600

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 8},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Django's default (PBKDF2) unless a comma-separated list of hasher paths is given. Only
# throw-away test stacks should set a fast one (tests/ does, to sign up many users).
if env("PASSWORD_HASHERS"):
    PASSWORD_HASHERS = [h.strip() for h in env("PASSWORD_HASHERS").split(",") if h.strip()]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- HTTP API ---------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.DeviceTokenAuthentication",
        "accounts.authentication.BearerTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["chatserver.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "chatserver.exception_handler.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "chatserver.pagination.Pagination",
    "DEFAULT_SCHEMA_CLASS": "chatserver.openapi.AutoSchema",
    # Rate limits (chatserver/throttling.py), shared by every process on every host (the
    # database, or Redis with REDIS_URL). "N/second|minute|hour|day": N at once, then
    # refilled evenly over the period; a burst of its own where THROTTLE_BURSTS says.
    "DEFAULT_THROTTLE_RATES": {
        # Per client address, signup and login together: slows password guessing down.
        "auth": env("AUTH_THROTTLE_RATE", "30/minute"),
        # Per username, failed logins only: guessing one account's password from many
        # addresses. Past it even the right password waits (the price of the limit).
        "login_failure": env("LOGIN_FAILURE_THROTTLE_RATE", "20/hour"),
        # Per user, every message POST: 2 a second sustained, SEND_THROTTLE_BURST at once.
        "send": env("SEND_THROTTLE_RATE", "120/minute"),
        # Per user, message POSTs with a file (on top of "send").
        "upload": env("UPLOAD_THROTTLE_RATE", "100/hour"),
        # Per user, asking for (or accepting) a friendship.
        "friend_request": env("FRIEND_REQUEST_THROTTLE_RATE", "60/hour"),
    },
    "UNAUTHENTICATED_USER": None,
}
# The proxies whose X-Forwarded-For is believed (addresses or networks, comma-separated):
# the client address the limits count is the last one in that header that is not theirs.
# Empty (the default) trusts only the project's own front server (chatserver/client_address.py):
# any client can write the header, and would get a new bucket per request.
TRUSTED_PROXIES = parse_networks(env("TRUSTED_PROXIES", ""))
# Requests at once, per scope, where it differs from the rate's N.
THROTTLE_BURSTS = {"send": env_int("SEND_THROTTLE_BURST", 30)}

SPECTACULAR_SETTINGS = {
    "TITLE": "Chat backend API",
    "DESCRIPTION": (
        "Phones send over HTTP; every change is published over MQTT "
        "(topics and payloads: docs/mqtt.md and docs/asyncapi.yaml in the repository)."
    ),
    "VERSION": "1.0.0",
    # Swagger UI and ReDoc from this server's own static files (drf-spectacular-sidecar),
    # never from a CDN: the docs work offline and load nothing from elsewhere.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # validatorUrl: Swagger UI would otherwise send the schema to validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None, "persistAuthorization": True},
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    # PATCH bodies are validated whole (no view uses partial=True): document them so.
    "COMPONENT_SPLIT_PATCH": False,
    # Two choice sets are both called `type`: name them.
    "ENUM_NAME_OVERRIDES": {
        "ChatTypeEnum": "chats.models.Chat.Kind",
        "MessageTypeEnum": "chats.models.Message.Type",
        # What a JSON send may say (a file's message takes its type from the file).
        "MessageSendTypeEnum": ["text", "invite"],
    },
}

# The largest JSON body accepted (a message is at most MESSAGE_MAX_LENGTH characters).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 256 * 1024)
MESSAGE_MAX_LENGTH = env_int("MESSAGE_MAX_LENGTH", 10_000)

# --- Static files -----------------------------------------------------------------------

# The admin's CSS and JavaScript, the API docs' Swagger UI and ReDoc (and any app's static
# files), served by WhiteNoise straight from the installed packages: no collectstatic
# step, the same in `make run`, in granian behind a proxy and in the tests. Indexed once
# when a process starts.
STATIC_URL = "static/"
WHITENOISE_USE_FINDERS = True

# --- Attachments ------------------------------------------------------------------------

# The largest upload; a bigger body is refused with 413 before it is read.
ATTACHMENT_MAX_SIZE = env_int("ATTACHMENT_MAX_SIZE", 25 * 1024 * 1024)
# How long a signed download link (for players that cannot send a token) works.
ATTACHMENT_LINK_TTL = env_int("ATTACHMENT_LINK_TTL", 300)
MEDIA_ROOT = env("MEDIA_ROOT", str(DATA_DIR / "media"))
# Files go through Django's storage API: on disk under MEDIA_ROOT by default, or an
# S3-compatible store with MEDIA_STORAGE=s3 (`pip install django-storages[s3]`).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if env("MEDIA_STORAGE") == "s3":
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env("S3_BUCKET"),
            "endpoint_url": env("S3_ENDPOINT_URL") or None,
            "region_name": env("S3_REGION") or None,
            "access_key": env("S3_ACCESS_KEY_ID"),
            "secret_key": env("S3_SECRET_ACCESS_KEY"),
            "default_acl": "private",
            "querystring_auth": True,
        },
    }
# Uploads above this go to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024

# Redis, shared by every process on every host, when REDIS_URL is set (redis://host:6379/0):
# the rate-limit buckets go there (chatserver/ratelimit.py), and Django's cache with them.
# Unset, the buckets live in the database (table chat_rate_bucket) and the cache, unused
# by the project, is per process.
REDIS_URL = env("REDIS_URL")
RATELIMIT_KEY_PREFIX = env("RATELIMIT_KEY_PREFIX", "chat-rl")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- MQTT -------------------------------------------------------------------------------

# Which broker `make run` starts and the server talks to: "mosquitto" (one process,
# broker/mosquitto.conf) or "rabbitmq" (a RabbitMQ node, broker/rabbitmq.conf, that can
# be one of a cluster: README "Scaling out"). Only chatserver/broker_access.py and the
# broker's own config know the difference.
BROKER = env("BROKER", "mosquitto").lower()
if BROKER not in {"mosquitto", "rabbitmq"}:
    raise ImproperlyConfigured(f"BROKER must be mosquitto or rabbitmq, got {BROKER!r}")

# Where the server's own processes reach the broker: a host, or a cluster's nodes as a
# comma-separated list of host[:port], tried in turn (chatserver/broker_addresses.py;
# a port left out is MQTT_PORT's, or MQTT_TLS_PORT's with MQTT_PLAINTEXT=off).
MQTT_HOST = env("MQTT_HOST", "127.0.0.1")
MQTT_PORT = env_int("MQTT_PORT", 1883)
MQTT_WS_PORT = env_int("MQTT_WS_PORT", 9001)
# What phones are told to connect to; empty means the host name the request came to.
MQTT_PUBLIC_HOST = env("MQTT_PUBLIC_HOST")
MQTT_PUBLIC_PORT = env_int("MQTT_PUBLIC_PORT", MQTT_PORT)
MQTT_PUBLIC_WS_PORT = env_int("MQTT_PUBLIC_WS_PORT", MQTT_WS_PORT)
# The broker's TLS listeners (MQTT_TLS=off: none): MQTT over TLS and WebSockets over TLS.
# Their certificate: MQTT_TLS_CERT and MQTT_TLS_KEY (PEM; read by `manage.py
# broker_prepare`, which copies them for the broker), or, unset, one of a local CA made
# once under DATA_DIR/tls/ (chatserver/tls.py): give its ca.pem to phones and `chat-sim --ca`.
MQTT_TLS = env("MQTT_TLS", "on").lower() not in {"off", "0", "false", "no"}
MQTT_TLS_PORT = env_int("MQTT_TLS_PORT", 8883)
MQTT_WSS_PORT = env_int("MQTT_WSS_PORT", 9443)
MQTT_TLS_CERT = env("MQTT_TLS_CERT")
MQTT_TLS_KEY = env("MQTT_TLS_KEY")
# The CA the server's own TLS connections trust (empty: the system's, for a certificate
# of a public CA).
MQTT_TLS_CA = env("MQTT_TLS_CA", "" if MQTT_TLS_CERT else str(DATA_DIR / "tls" / "ca.pem"))
# MQTT_PLAINTEXT=off: no plaintext listener at all (phones and the server's own
# processes connect over TLS, to MQTT_HOST, which must then be a name on the certificate).
MQTT_PLAINTEXT = env_bool("MQTT_PLAINTEXT", True)
if not (MQTT_PLAINTEXT or MQTT_TLS):
    raise ImproperlyConfigured("MQTT_PLAINTEXT=off needs the TLS listeners: leave MQTT_TLS on")
try:
    parse_broker_addresses(MQTT_HOST, default_port=MQTT_PORT)
except ValueError as error:
    raise ImproperlyConfigured(f"MQTT_HOST: {error}") from None
MQTT_PUBLIC_TLS_PORT = env_int("MQTT_PUBLIC_TLS_PORT", MQTT_TLS_PORT)
MQTT_PUBLIC_WSS_PORT = env_int("MQTT_PUBLIC_WSS_PORT", MQTT_WSS_PORT)
# The broker account of the server itself (the relay). Its password never leaves it.
MQTT_ADMIN_USERNAME = env("MQTT_ADMIN_USERNAME", "chat-server")
MQTT_ADMIN_PASSWORD = secret("mqtt-admin-password", "MQTT_ADMIN_PASSWORD")
MQTT_KEEPALIVE = env_int("MQTT_KEEPALIVE", 30)
# The MQTT version of the server's own connections (relay, presence, push): "5" (its
# PUBACK reason codes show a refused publish) or "3.1.1" (RabbitMQ 3.10 speaks no other;
# what 3.1.1 cannot say is handled as docs/mqtt.md tells). Default: 5 on Mosquitto, 3.1.1
# on RabbitMQ, which refuses anything else.
MQTT_PROTOCOL = env("MQTT_PROTOCOL", "3.1.1" if BROKER == "rabbitmq" else "5")
if MQTT_PROTOCOL not in {"5", "3.1.1"}:
    raise ImproperlyConfigured(f"MQTT_PROTOCOL must be 5 or 3.1.1, not {MQTT_PROTOCOL!r}")
if BROKER == "rabbitmq" and MQTT_PROTOCOL != "3.1.1":
    raise ImproperlyConfigured("BROKER=rabbitmq speaks MQTT 3.1.1 only: MQTT_PROTOCOL=3.1.1")
# The broker's failed-login limit (broker/login_guard.c, rendered by `manage.py
# broker_prepare`): after MQTT_LOGIN_FAILURES refused logins of one device account within
# MQTT_LOGIN_WINDOW seconds, that account is refused for MQTT_LOGIN_COOLDOWN seconds.
MQTT_LOGIN_FAILURES = env_int("MQTT_LOGIN_FAILURES", 10)
MQTT_LOGIN_WINDOW = env_int("MQTT_LOGIN_WINDOW", 60)
MQTT_LOGIN_COOLDOWN = env_int("MQTT_LOGIN_COOLDOWN", 60)

# --- Broker ---------------------------------------------------------------------------

# On: the broker runs elsewhere (`make cluster`, broker hosts of their own) and `make run`
# starts everything but it (scripts/run.sh), nor prepares its files.
BROKER_EXTERNAL = env_bool("BROKER_EXTERNAL")
# The RabbitMQ node's Erlang name (name@host: @localhost keeps epmd and the distribution
# on loopback) and its ports besides the MQTT ones, all below 32768 (the kernel's
# ephemeral ports, 32768-60999, can hold a port a node then fails to listen on): AMQP
# (loopback only), the management HTTP API (loopback only), the Erlang distribution
# (node to node and rabbitmqctl) and epmd, where nodes find each other's distribution port.
RABBITMQ_NODENAME = env("RABBITMQ_NODENAME", "chat@localhost")
# The node's own directory (config, definitions, its database and log): one per node when
# several run on one machine (scripts/rabbitmq-cluster.sh).
RABBITMQ_NODE_DIR = Path(env("RABBITMQ_NODE_DIR", str(DATA_DIR / "broker" / "rabbitmq"))).resolve()
RABBITMQ_AMQP_PORT = env_int("RABBITMQ_AMQP_PORT", 5672)
RABBITMQ_MANAGEMENT_PORT = env_int("RABBITMQ_MANAGEMENT_PORT", 15672)
RABBITMQ_DIST_PORT = env_int("RABBITMQ_DIST_PORT", 25672)
RABBITMQ_EPMD_PORT = env_int("RABBITMQ_EPMD_PORT", 4369)
# The management API the server's workers call (revocation: disconnecting a user,
# dropping a session's binding), logging in as MQTT_ADMIN_USERNAME. A cluster lists
# several, comma-separated (each node's API acts cluster-wide, so any one that answers
# will do): RABBITMQ_MANAGEMENT_URLS is that list.
RABBITMQ_MANAGEMENT_URL = env("RABBITMQ_MANAGEMENT_URL", f"http://127.0.0.1:{RABBITMQ_MANAGEMENT_PORT}")
RABBITMQ_MANAGEMENT_URLS = [u.strip().rstrip("/") for u in RABBITMQ_MANAGEMENT_URL.split(",") if u.strip()]
# Every node of the cluster (name@host, comma-separated, this one included): a fresh
# node joins them by itself (broker/rabbitmq.conf). Empty: a node of its own.
RABBITMQ_CLUSTER_NODES = [n.strip() for n in env("RABBITMQ_CLUSTER_NODES").split(",") if n.strip()]
# The Erlang distribution's shared secret: the same on every node of a cluster (and for
# rabbitmqctl); generated once under DATA_DIR/secrets/ when not set.
RABBITMQ_ERLANG_COOKIE = secret("rabbitmq-erlang-cookie", "RABBITMQ_ERLANG_COOKIE")
# The node's Erlang VM flags (chatserver/rabbitconf.py DEFAULT_ERL_ARGS: one scheduler,
# no busy-waiting: low idle CPU on a small machine; drop `+S 1:1` on a broker host of its own).
RABBITMQ_ERL_ARGS = env("RABBITMQ_ERL_ARGS", "+S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none")
# RabbitMQ asks Django about every device login and subscription at
# http://127.0.0.1:BROKER_AUTH_PORT/broker-auth/BROKER_AUTH_SECRET/{user,vhost,resource,topic}
# (nginx's loopback listener); the secret in the path keeps anybody else from asking.
BROKER_AUTH_PORT = env_int("BROKER_AUTH_PORT", 15680)
BROKER_AUTH_SECRET = secret("broker-auth-secret", "BROKER_AUTH_SECRET")
# Seconds RabbitMQ reuses one of Django's answers to a vhost, queue or topic check
# (rabbitmq_auth_backend_cache; logins are never cached): fewer requests per CONNECT and
# SUBSCRIBE; the relay's revocation waits it out (chatserver/rabbit_access.py).
RABBITMQ_AUTH_CACHE_TTL = env_float("RABBITMQ_AUTH_CACHE_TTL", 2.0)

# How long signup, login, logout and membership changes wait for the relay to apply
# their broker grants before answering (so the credentials and topics handed out work
# at once). When the broker is down the answer comes after this, and the grants are
# applied as soon as it is back.
BROKER_SYNC_TIMEOUT = env_float("BROKER_SYNC_TIMEOUT", 5.0)

# The relay: rows per batch (one SELECT), and how often it looks at the outbox when
# nothing wakes it (PostgreSQL wakes it on every commit through LISTEN/NOTIFY; SQLite is
# polled).
RELAY_BATCH_SIZE = env_int("RELAY_BATCH_SIZE", 500)
# Rows the relay has sent and not deleted, at most: what a killed relay resends. It
# deletes them in slices of half of it, one DELETE each (chatserver/relay.py). 200: the
# half still in flight while a slice is deleted is 100 rows, 300 publishes for a direct
# chat's messages, above the 100 paho and the broker keep in flight, so the pipeline
# never runs dry; smaller windows cost more DELETEs and round trips per message. (Above
# RELAY_BATCH_SIZE, it is the batch.)
RELAY_WINDOW = env_int("RELAY_WINDOW", 200)
RELAY_POLL_INTERVAL = env_float("RELAY_POLL_INTERVAL", 0.02)
RELAY_IDLE_RECHECK = env_float("RELAY_IDLE_RECHECK", 1.0)
# Seconds of the broker's silence (no answer to anything) after which the relay takes it
# for stalled and sends the unanswered rows again on the next round; a broker that keeps
# answering, however slowly, is waited for.
RELAY_ACK_TIMEOUT = env_float("RELAY_ACK_TIMEOUT", 10.0)
# Relays partitioned by chat (chatserver/relay.py): N relays, each sending the outbox
# rows of its partition (a chat's rows: `chat_id % N`; a user's: `user_id % N`), so
# delivery grows with relays while each chat keeps its order. Every relay process takes
# the first free partition; one more stands by and takes over a partition whose relay
# died. Every process of a stack must agree on it. SQLite has one relay: 1 only.
RELAY_PARTITIONS = env_int("RELAY_PARTITIONS", 1)
if not 1 <= RELAY_PARTITIONS <= 1000:
    raise ImproperlyConfigured("RELAY_PARTITIONS must be between 1 and 1000")
if RELAY_PARTITIONS > 1 and DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    raise ImproperlyConfigured("RELAY_PARTITIONS above 1 needs PostgreSQL (advisory locks, one relay per partition)")
# A row that was in flight, sent alone, each time the broker dropped the connection this
# many times is set aside as a dead letter (chatserver/relay.py): over MQTT 3.1.1 a refusal
# closes the connection (RabbitMQ) instead of answering with a reason code.
RELAY_MAX_DROPS = env_int("RELAY_MAX_DROPS", 3)

# Back-pressure (chatserver/backpressure.py): while the relay works and yet the oldest
# event queued since the broker last started answering it is older than this (seconds),
# message POSTs are refused with 503 `overloaded` and Retry-After, until delivery catches
# up. 0: never. An outage's backlog never refuses anything. Half a second keeps the copies
# of what is accepted within a second (measured: a 100-member group asked 1.5x what the
# relay carries, receipt p99 0.86 s; at 1 s, 1.5 s; README "Bench numbers"); on this
# machine the outbox's oldest event stays well below it up to 1:1 saturation. A site
# whose relays stall for longer than that in normal work raises it.
INGEST_MAX_OUTBOX_AGE = env_float("INGEST_MAX_OUTBOX_AGE", 0.5)

# /health/ says `degraded` once the oldest queued event has waited longer than this
# (seconds): messages are accepted but not delivered.
HEALTH_MAX_OUTBOX_AGE = env_float("HEALTH_MAX_OUTBOX_AGE", 5.0)

# Push notifications through Firebase Cloud Messaging HTTP v1 (chatserver/push.py). Off
# unless both the project and a service-account JSON are given. The JSON's `token_uri` is
# used as it is: a site of its own (or the test suite) points it at its own endpoint.
FCM_PROJECT_ID = env("FCM_PROJECT_ID")
FCM_SERVICE_ACCOUNT_FILE = env("FCM_SERVICE_ACCOUNT_FILE")
FCM_ENDPOINT = env("FCM_ENDPOINT", "https://fcm.googleapis.com")
FCM_TIMEOUT = env_float("FCM_TIMEOUT", 10.0)
# How long FCM keeps a push for a phone that is off (FCM's maximum: 4 weeks).
PUSH_TTL = env_int("PUSH_TTL", 2419200)
PUSH_CONCURRENCY = env_int("PUSH_CONCURRENCY", 16)
PUSH_BATCH_SIZE = env_int("PUSH_BATCH_SIZE", 200)
# Sends of one push before it is given up (429s and 5xx, with back-off from 1 s doubling).
PUSH_MAX_ATTEMPTS = env_int("PUSH_MAX_ATTEMPTS", 8)

# Link previews (chats/previews.py, the `previews` worker): the page of a message's first
# http(s) link, read with a strict time and size limit, cached per URL for the TTL
# (seconds; pages that showed nothing too). Never from private, loopback, link-local or
# other non-public addresses unless LINK_PREVIEW_ALLOW_PRIVATE (the tests' local server).
LINK_PREVIEWS = env_bool("LINK_PREVIEWS", True)
LINK_PREVIEW_ALLOW_PRIVATE = env_bool("LINK_PREVIEW_ALLOW_PRIVATE")
LINK_PREVIEW_TIMEOUT = env_float("LINK_PREVIEW_TIMEOUT", 3.0)
LINK_PREVIEW_MAX_BYTES = env_int("LINK_PREVIEW_MAX_BYTES", 512 * 1024)
LINK_PREVIEW_MAX_REDIRECTS = 3
LINK_PREVIEW_TTL = env_int("LINK_PREVIEW_TTL", 86400)
LINK_PREVIEW_CONCURRENCY = env_int("LINK_PREVIEW_CONCURRENCY", 8)

# Check every queued event against its JSON Schema in docs/asyncapi.yaml (the suite turns
# it on; it costs a schema validation per event, so production leaves it off).
OUTBOX_CHECK_SCHEMAS = env_bool("OUTBOX_CHECK_SCHEMAS")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
