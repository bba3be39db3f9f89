"""Workers: the server's long-running processes, one per job (`manage.py worker <name>`).

This module knows no app. Apps register their workers from `AppConfig.ready()`:

    workers.register(name="presence", factory=PresenceWorker)

and `manage.py worker presence` runs one: `factory(stop=<threading.Event>)` builds it,
`run()` drives it until SIGTERM or SIGINT. What `run()` guarantees to every worker:

- Its own PostgreSQL session (`Session`, beside Django's connection): it LISTENs on the
  worker's `listen` channel and holds the worker's `lock_key` advisory lock, so exactly
  one worker of a kind is active; another one started stands by until the lock is free.
  A worker with several locks (`lock_keys()`: the relay, one per partition) takes the
  first free one, and `held_lock` says which (its index); one started when all are taken
  stands by until any is free. (SQLite has neither: the worker is polled every
  `poll_interval` and runs alone, `held_lock` None.)
- Database outages are survived: a "database unavailable" error (a dropped connection, a
  restarted server, `pg_terminate_backend`) closes Django's connection and the session
  (calling `deactivated()` first if the worker was active), then `run()` reconnects
  both, takes the lock again (another worker may have taken it meanwhile: then this one
  stands by) and calls `activated()` again before the next `step()`. Reconnection
  attempts are at most `RECONNECT_CAP` seconds apart, so work resumes within about a
  second of the database's return.
- Nothing else stops it: any other exception out of `step()` is logged with its traceback
  and the worker backs off (doubling from `BACKOFF_FIRST` up to `BACKOFF_CAP`) and goes on.
  A worker whose items can fail one by one sets the failing item aside itself (the relay
  moves it to `chatserver.models.DeadLetter`), so one bad item never blocks the others.

A worker is an object with the attributes and methods of `Worker` (subclassing it is the
easy way). A worker fed by a table of its own (say, push notifications) gets a NOTIFY
trigger on that table, a `listen` channel and a `lock_key`, and its `step()` takes one
batch: the same shape as the relay's.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from chatserver.broker_addresses import parse_broker_addresses

logger = logging.getLogger("chatserver.workers")

BACKOFF_FIRST, BACKOFF_CAP = 0.1, 5.0
# Reconnecting to a database that is down costs a refused connection: try often, so work
# resumes within moments of its return.
RECONNECT_CAP = 1.0
STANDBY_RECHECK = 2.0
# The longest a worker waiting for work goes without looking at its stop flag.
WAIT_SLICE = 0.5

try:
    import psycopg
except ImportError:  # an SQLite-only installation
    psycopg = None

# "The database is unavailable": Django's wrappers, and psycopg's own errors from the
# session's raw connection. Other database errors (a constraint, a bad query) are bugs
# or bad data, not outages.
DATABASE_UNAVAILABLE: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)
if psycopg is not None:
    DATABASE_UNAVAILABLE += (psycopg.OperationalError, psycopg.InterfaceError)


class Worker:
    """What `run()` drives. `step()` does one round of work and returns whether it made
    progress (False: `run()` backs off before the next round)."""

    name: str = "worker"
    # Any 64-bit number only this worker uses: one active worker of this kind at a time.
    lock_key: int | None = None
    # While active: the index in `lock_keys()` of the lock it holds (None: no lock held).
    held_lock: int | None = None
    # The NOTIFY channel that wakes this worker (`Session.wait`), if any.
    listen: str | None = None
    # Channels whose notifications are work in themselves (their payload is the item):
    # listened to only while active (a standby would only pile them up), each handed to
    # `on_notify` as it is read, without waking `step()`.
    also_listen: tuple[str, ...] = ()
    # Without NOTIFY (SQLite), how long `Session.wait` sleeps at most.
    poll_interval: float = 0.5
    # Whether this worker's COMMITs wait for the write-ahead log to be on disk. A worker
    # whose writes a database crash may lose without harm (they are done again: the relay
    # resends what it had not deleted) says False, and its own connection runs with
    # PostgreSQL's synchronous_commit off: its commits skip the flush (milliseconds each
    # on a real disk); nobody else's durability changes.
    durable_commits: bool = True

    def lock_keys(self) -> tuple[int, ...]:
        """The advisory locks any one of which makes this worker active, tried in order."""
        return () if self.lock_key is None else (self.lock_key,)

    def activated(self) -> None:
        """Called each time this worker becomes the active one (first start, and again
        after a database outage), before its next `step()`."""

    def deactivated(self) -> None:
        """Called when this worker stops being the active one (its session was lost: it
        may not hold its lock any more) until `activated()` is called again."""

    def step(self, *, session: Session) -> bool:
        raise NotImplementedError

    def on_notify(self, channel: str, payload: str) -> None:
        """A notification on one of `also_listen`, read by the session (in the worker's
        own thread: inside `Session.check` or `Session.wait`)."""

    def wake_in(self) -> float | None:
        """After `on_notify`: in how many seconds `step()` should run again at the latest
        (something it handed in is due then), or None. `Session.wait` ends by then."""
        return None

    def close(self) -> None:
        """Called once, when `run()` ends."""


Factory = Callable[..., Worker]
_registry: dict[str, Factory] = {}


def register(*, name: str, factory: Factory) -> None:
    """Make `manage.py worker <name>` run `factory(stop=...)`. Registering the same name
    twice with another factory is an error (two apps would fight over it)."""
    existing = _registry.get(name)
    if existing is not None and existing is not factory:
        raise ValueError(f"worker {name!r} is already registered ({existing!r})")
    _registry[name] = factory


def registered() -> dict[str, Factory]:
    return dict(_registry)


class Session:
    """A worker's own PostgreSQL session: its LISTEN and its advisory lock.

    Its methods raise a `DATABASE_UNAVAILABLE` error when the session was dropped; `run()`
    then closes it and opens a new one.
    """

    def __init__(self, *, worker: Worker, stop: threading.Event) -> None:
        self.worker = worker
        self.stop = stop
        self.conn = None
        self.active = False
        self.notified = False

    def open(self) -> None:
        if connection.vendor != "postgresql":
            self.active = True
            return
        params = connection.get_connection_params()
        params.pop("cursor_factory", None)
        params.setdefault("connect_timeout", 5)
        self.conn = psycopg.connect(**params, autocommit=True)
        if self.worker.listen:
            self.conn.execute(f"LISTEN {self.worker.listen}")

    def take_lock(self) -> bool:
        """Block until this worker holds its lock (the first free one of `lock_keys()`);
        False if told to stop first."""
        self.worker.held_lock = None
        keys = self.worker.lock_keys() if self.conn is not None else ()
        if not keys:
            self._listen_also()
            self.active = True
            return True
        announced = False
        while not self.stop.is_set():
            for index, key in enumerate(keys):
                (held,) = self.conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
                if held:
                    self.worker.held_lock = index
                    self._listen_also()
                    self.active = True
                    return True
            if not announced:
                logger.info("another %s is active; standing by", self.worker.name)
                announced = True
            self.stop.wait(STANDBY_RECHECK)
        return False

    def _listen_also(self) -> None:
        if self.conn is not None:
            for channel in self.worker.also_listen:
                self.conn.execute(f"LISTEN {channel}")

    def _dispatch(self, notification) -> bool:
        """Hand an `also_listen` notification to the worker; True if it is a wake-up."""
        if notification.channel in self.worker.also_listen:
            self.worker.on_notify(notification.channel, notification.payload)
            return False
        return True

    def check(self) -> None:
        """Read what the server sent (pending notifications): raises at once, without a
        round trip, if the session was dropped, so the lock is never assumed held longer
        than one batch after it was lost."""
        if self.conn is not None:
            for notification in self.conn.notifies(timeout=0):
                # Kept for `wait`: a wake-up read here must not be lost to it.
                if self._dispatch(notification):
                    self.notified = True

    def wait(self, timeout: float) -> bool:
        """Until a notification on the worker's channel or `timeout`. True if there may be
        work: notified, or without NOTIFY (SQLite: after `poll_interval`, to poll)."""
        if self.conn is None or not self.worker.listen:
            self.stop.wait(min(timeout, self.worker.poll_interval))
            return True
        notified, self.notified = self.notified, False
        # In slices, so that a signal (which only sets `stop`) ends the wait soon.
        deadline = time.monotonic() + timeout
        while not notified and not self.stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for notification in self.conn.notifies(timeout=min(remaining, WAIT_SLICE), stop_after=1):
                wake = self._dispatch(notification)
                notified = wake or notified
                soon = None if wake else self.worker.wake_in()
                if soon is not None:
                    deadline = min(deadline, time.monotonic() + soon)
        # Drain whatever else arrived: one look at the table serves them all.
        for notification in self.conn.notifies(timeout=0):
            notified = self._dispatch(notification) or notified
        return notified

    def close(self) -> None:
        self.active = False
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken: nothing to release
                pass


def broker_connection(*, name: str):
    """A worker's own connection to the broker, with the server's admin account (client id
    `chat-<name>-<host>-<pid>`: unique per process, so copies never kick each other off;
    `-<n>` added per connection when MQTT_HOST lists several nodes, chatserver/mqtt.py)."""
    from chatserver.mqtt import BrokerConnection  # paho: only in the worker processes

    # Plaintext on the server's own network when offered; TLS when it is off altogether.
    tls = not settings.MQTT_PLAINTEXT
    return BrokerConnection(
        # Every node of a cluster, tried in turn (chatserver/broker_addresses.py).
        addresses=parse_broker_addresses(
            settings.MQTT_HOST, default_port=settings.MQTT_TLS_PORT if tls else settings.MQTT_PORT),
        username=settings.MQTT_ADMIN_USERNAME,
        password=settings.MQTT_ADMIN_PASSWORD,
        client_id=f"chat-{name}-{socket.gethostname()}-{os.getpid()}",
        keepalive=settings.MQTT_KEEPALIVE,
        tls=tls,
        tls_ca=settings.MQTT_TLS_CA or None,
        protocol=settings.MQTT_PROTOCOL,
    )


def broker_access():
    """How the relay applies access operations on the broker settings.BROKER names
    (`chatserver.broker_access.Access`)."""
    if settings.BROKER == "rabbitmq":
        from chatserver.rabbit_access import RabbitAccess

        return RabbitAccess(
            urls=settings.RABBITMQ_MANAGEMENT_URLS,
            username=settings.MQTT_ADMIN_USERNAME,
            password=settings.MQTT_ADMIN_PASSWORD,
            cache_ttl=settings.RABBITMQ_AUTH_CACHE_TTL,
        )
    from chatserver.broker_access import DynsecAccess

    return DynsecAccess()


def _close_django_connection() -> None:
    try:
        connection.close()
    except Exception:
        pass


def commits_without_flush() -> None:
    """This process's database connections from now on commit without waiting for the
    WAL flush (PostgreSQL: `synchronous_commit=off` as a connection option; nothing
    elsewhere). For `Worker.durable_commits` False."""
    if connection.vendor != "postgresql":
        return
    options = connection.settings_dict.setdefault("OPTIONS", {})
    flag = "-c synchronous_commit=off"
    if flag not in options.get("options", ""):
        options["options"] = f"{options.get('options', '')} {flag}".strip()
        _close_django_connection()  # the next query connects with it


def run(*, worker: Worker, stop: threading.Event) -> None:
    """Drive `worker` until `stop` is set; it never returns on an error (see the module)."""
    if not worker.durable_commits:
        commits_without_flush()
    session = Session(worker=worker, stop=stop)
    backoff = BACKOFF_FIRST
    try:
        while not stop.is_set():
            outage = False
            try:
                if not session.active:
                    session.open()
                    if not session.take_lock():
                        break
                    logger.info("%s active", worker.name)
                    try:
                        worker.activated()
                    except BaseException:
                        session.close()  # so that the next round activates it again
                        raise
                session.check()
                progressed = worker.step(session=session)
            except DATABASE_UNAVAILABLE as exc:
                logger.warning("%s: database unavailable (%s); reconnecting", worker.name, " ".join(str(exc).split()))
                if session.active:
                    worker.deactivated()
                session.close()
                _close_django_connection()
                progressed, outage = False, True
            except Exception:
                logger.exception("%s: unexpected error; going on", worker.name)
                progressed = False
            if progressed:
                backoff = BACKOFF_FIRST
            else:
                stop.wait(min(backoff, RECONNECT_CAP) if outage else backoff)
                backoff = min(backoff * 2, BACKOFF_CAP)
    finally:
        try:
            worker.close()
        finally:
            session.close()
            _close_django_connection()


def run_forever(*, name: str) -> None:
    """`manage.py worker <name>`: build the registered worker and run it until SIGTERM/SIGINT."""
    try:
        factory = _registry[name]
    except KeyError:
        raise LookupError(f"no worker named {name!r} (registered: {', '.join(sorted(_registry)) or 'none'})") from None
    stop = threading.Event()

    def on_signal(signum, frame):
        logger.info("%s: signal %s, stopping", name, signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    run(worker=factory(stop=stop), stop=stop)
    logger.info("%s stopped after %.0f s", name, time.monotonic() - started)
