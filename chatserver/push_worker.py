"""The `push` worker: push jobs in, FCM sends out (see chatserver/push.py for the design)."""

from __future__ import annotations

import logging
import queue
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from chatserver import push
from chatserver.fcm import FcmClient, Outcome, Result
from chatserver.models import PushJob
from chatserver.push import RETRY, Delivery
from chatserver.workers import Worker

logger = logging.getLogger("chatserver.push")

# Any 64-bit number only this program uses: the key of the "one push worker" lock.
LOCK_KEY = 0x636861745F707368  # "chat_psh"
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 600.0
# While sends are open, how often their answers are recorded (no query until one came;
# then one transaction for all that came meanwhile).
ANSWERS_EVERY = 0.05


def backoff(attempts: int) -> float:
    """Seconds before the attempt after `attempts` failed ones: 1, 2, 4... up to 10 min."""
    return min(BACKOFF_FIRST * 2 ** max(attempts - 1, 0), BACKOFF_CAP)


class PushWorker(Worker):
    """Sends pushes concurrently, without waiting for a batch to finish: a job whose
    sends hang (up to FCM_TIMEOUT) delays no other job. The main thread claims and builds
    jobs and records results (it owns the database connection); sends run on a pool.

    It looks for jobs only when there may be some: on the job table's NOTIFY (every
    queued job sends one at commit: migration chatserver 0004), when the retry it knows
    to be the earliest comes due (retries are queued by this worker itself, so it knows
    their times; the table is asked once on activation and after each such retry), and
    again at once when a claim was full (PUSH_BATCH_SIZE: more may wait). While sends are
    open it looks at their answers every ANSWERS_EVERY, which needs no query until one
    came; before, each of those rounds also asked the table for due jobs (20 queries a
    second while any push was in flight, 100/s of pushes or none)."""

    name = "push"
    lock_key = LOCK_KEY
    listen = push.NOTIFY_CHANNEL

    def __init__(self, *, stop=None, client: FcmClient | None = None) -> None:
        self.stop = stop
        self.client = client
        self.pool = ThreadPoolExecutor(max_workers=settings.PUSH_CONCURRENCY, thread_name_prefix="push")
        self.done: queue.SimpleQueue = queue.SimpleQueue()  # (job id, delivery, attempts, result)
        self.open: dict[int, int] = {}  # job id -> deliveries not answered yet
        self.outcomes: dict[int, list] = {}  # job id -> (delivery, attempts, result) answered
        # Whether the table may hold due jobs not claimed yet (a NOTIFY came, a claim was
        # full, or just activated), and when the earliest known retry comes due.
        self.look = True
        self.next_due = None  # a datetime, or None: no retry waiting
        self.next_due_known = False

    def activated(self) -> None:
        # Whatever was queued while not active: look at the table at once.
        self.look, self.next_due_known = True, False
        if self.client is None and push.enabled():
            self.client = FcmClient(
                project_id=settings.FCM_PROJECT_ID,
                service_account_file=settings.FCM_SERVICE_ACCOUNT_FILE,
                endpoint=settings.FCM_ENDPOINT,
                timeout=settings.FCM_TIMEOUT,
            )

    def deactivated(self) -> None:
        # The database went away: sends under way finish, but their jobs are claimed
        # again once back (at least once: a push may be sent twice, never lost).
        self.open.clear()
        self.outcomes.clear()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def step(self, *, session) -> bool:
        if self.client is None:
            # Push is off (no FCM settings): nothing is ever queued; idle.
            session.wait(60.0)
            return True
        settled = self._settle_answered()
        if not self.next_due_known:
            self.next_due, self.next_due_known = self._earliest_waiting(), True
        now = timezone.now()
        due = self.next_due is not None and self.next_due <= now
        started = 0
        if self.look or due:
            self.look = False
            started = self._start_due()
            if due and len(self.open) < settings.PUSH_BATCH_SIZE:
                # That retry is claimed now: which one comes next, the table says. (With
                # the claim full it waits for room, still due.)
                self.next_due = self._earliest_waiting()
        if not settled and not started and session.wait(self._idle_wait()):
            self.look = True  # a job was queued
        return True

    def _idle_wait(self) -> float:
        if self.open:
            return ANSWERS_EVERY
        if self.next_due is None:
            return 60.0  # nothing queued: a NOTIFY wakes it
        return max(0.0, min(60.0, (self.next_due - timezone.now()).total_seconds()))

    def _earliest_waiting(self):
        """The `not_before` of the earliest job not failed and not claimed by this worker."""
        return (PushJob.objects.filter(failed=False).exclude(id__in=list(self.open))
                .order_by("not_before").values_list("not_before", flat=True).first())

    def _start_due(self) -> int:
        room = settings.PUSH_BATCH_SIZE - len(self.open)
        if room <= 0:
            self.look = True  # once answers make room
            return 0
        jobs = list(
            PushJob.objects.filter(failed=False, not_before__lte=timezone.now())
            .exclude(id__in=list(self.open))
            .order_by("id")[:room]
        )
        if len(jobs) == room:
            self.look = True  # a full claim: more may be due
        for job in jobs:
            try:
                if job.kind == RETRY:
                    work = [(Delivery.from_json(job.data), job.attempts)]
                else:
                    work = [(d, 0) for d in push.builder_of(job.kind)(job.data)]
            except Exception as exc:  # a job nobody can build: set aside, the rest flows on
                logger.exception("push job %s (%s) cannot be built", job.id, job.kind)
                PushJob.objects.filter(id=job.id).update(failed=True, last_error=f"build: {type(exc).__name__}: {exc}")
                continue
            if not work:
                PushJob.objects.filter(id=job.id).delete()  # nobody to wake (all connected, muted...)
                continue
            self.open[job.id] = len(work)
            self.outcomes[job.id] = []
            for delivery, attempts in work:
                self.pool.submit(self._send, job.id, delivery, attempts)
        return len(jobs)

    def _send(self, job_id: int, delivery: Delivery, attempts: int) -> None:
        try:
            result = self.client.send(delivery.message)
        except Exception as exc:  # a bug in the client: retried, not lost
            logger.exception("push send failed")
            result = Result(Outcome.RETRY, error=f"{type(exc).__name__}: {exc}")
        self.done.put((job_id, delivery, attempts, result))

    def _settle_answered(self) -> int:
        """Record the answers that came; a job leaves once all its deliveries answered."""
        finished = []
        while True:
            try:
                job_id, delivery, attempts, result = self.done.get_nowait()
            except queue.Empty:
                break
            if job_id not in self.open:
                continue  # from before an outage: its job will be claimed again
            self.outcomes[job_id].append((delivery, attempts + 1, result))
            self.open[job_id] -= 1
            if self.open[job_id] == 0:
                finished.append(job_id)
        if not finished:
            return 0
        later, dead, now = [], [], timezone.now()
        for job_id in finished:
            del self.open[job_id]
            for delivery, attempts, result in self.outcomes.pop(job_id):
                if result.outcome == Outcome.SENT:
                    continue
                if result.outcome == Outcome.DROP_TOKEN:
                    logger.info("push to device %s: token dropped (%s)", delivery.device_id, result.error)
                    dead.append((delivery.device_id, delivery.message.token))
                    continue
                retry = result.outcome == Outcome.RETRY and attempts < settings.PUSH_MAX_ATTEMPTS
                if not retry:
                    logger.warning(
                        "push to device %s given up after %d attempts: %s", delivery.device_id, attempts, result.error
                    )
                delay = max(result.retry_after or 0.0, backoff(attempts))
                # A retry is due after its back-off; one given up stays, failed, for the operator.
                later.append(PushJob(
                    kind=RETRY, data=delivery.to_json(), attempts=attempts, failed=not retry,
                    not_before=now + timedelta(seconds=delay), last_error=result.error,
                ))
        with transaction.atomic():
            if later:
                PushJob.objects.bulk_create(later)
            PushJob.objects.filter(id__in=finished).delete()
        # Their NOTIFY comes now, before they are due: the worker keeps their times.
        for job in later:
            if not job.failed and (self.next_due is None or job.not_before < self.next_due):
                self.next_due = job.not_before
        for device_id, token in dead:
            for handler in push.dead_token_handlers():
                handler(device_id, token)
        return len(finished)
