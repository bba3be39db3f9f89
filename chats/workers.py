"""The `previews` worker (`manage.py worker previews`): queued links in, previews out.

Woken by the NOTIFY of the job table's trigger (migration chats 0004; polled on SQLite),
it takes the oldest jobs in batches, fetches the pages of their URLs concurrently
(`chats.previews.fetch`: time- and size-limited, public addresses only), through the
cache per URL (`LinkPreview` rows younger than LINK_PREVIEW_TTL, pages that showed
nothing included), stores each preview on its message (`message_preview_set`: the
chat's next version and `message.updated` to the members) and only then deletes the
job. A worker killed or a database gone mid-batch leaves its jobs queued: they are
done again once it is back (a page may be fetched twice, a preview is never lost; the
second store changes nothing). With LINK_PREVIEWS off nothing is queued and it idles.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from chats import previews
from chats.models import LinkPreview, PreviewJob
from chats.services.message_edit import message_preview_set
from chatserver.workers import Worker

logger = logging.getLogger("chats.previews")

# Any 64-bit number only this program uses: the key of the "one previews worker" lock.
LOCK_KEY = 0x636861745F707276  # "chat_prv"
NOTIFY_CHANNEL = "chat_previews"
BATCH_SIZE = 32


class PreviewWorker(Worker):
    name = "previews"
    lock_key = LOCK_KEY
    listen = NOTIFY_CHANNEL

    def __init__(self, *, stop=None) -> None:
        self.stop = stop
        self.pool = ThreadPoolExecutor(max_workers=settings.LINK_PREVIEW_CONCURRENCY, thread_name_prefix="preview")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def step(self, *, session) -> bool:
        jobs = list(PreviewJob.objects.order_by("id")[:BATCH_SIZE])
        if not jobs:
            session.wait(60.0)
            return True
        found = self._previews({job.url for job in jobs})
        for job in jobs:
            if message_preview_set(message_id=job.message_id, url=job.url, preview=found[job.url]):
                logger.info("message %s: preview of %s", job.message_id, job.url[:200])
            PreviewJob.objects.filter(id=job.id).delete()
        return True

    def _previews(self, urls: set[str]) -> dict[str, dict | None]:
        """Each URL's preview: cached if fresh, else fetched (all at once) and cached."""
        fresh = timezone.now() - timedelta(seconds=settings.LINK_PREVIEW_TTL)
        found = dict(LinkPreview.objects.filter(url__in=urls, fetched_at__gt=fresh).values_list("url", "data"))
        missing = sorted(urls - found.keys())
        for url, data in zip(missing, self.pool.map(previews.fetch, missing)):
            LinkPreview.objects.update_or_create(url=url, defaults={"data": data, "fetched_at": timezone.now()})
            found[url] = data
        return found
