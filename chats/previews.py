"""Link previews: a message's first link, and what its page shows (no database here).

The `previews` worker (chats/workers.py) calls `fetch` for each queued link; requests
never do. A fetch:

- takes http and https URLs only, on any port, without user info;
- resolves the host itself and checks **every** address it resolves to: one that is not
  a public unicast address (private, loopback, link-local, shared, reserved, multicast,
  unspecified, or IPv4 mapped into IPv6 as one) refuses the fetch, unless
  `LINK_PREVIEW_ALLOW_PRIVATE`; then it connects to the address it checked (the URL's
  host is sent as `Host`, and for https as the TLS server name, whose certificate is
  verified against it), so a second resolution cannot hand it another address (DNS
  rebinding);
- follows at most `LINK_PREVIEW_MAX_REDIRECTS` (3) redirects, each target checked the
  same way from scratch; a fourth is a failure;
- ends after `LINK_PREVIEW_TIMEOUT` (3 s) in all, redirects and slow bodies included
  (the socket's timeout is what remains before each read), and reads at most
  `LINK_PREVIEW_MAX_BYTES` (512 KiB) of the body, decompressed: a bigger page is cut
  there and what was read is parsed (the tags are in the head);
- reads HTML only (`text/html`, `application/xhtml+xml`), with the standard library's
  parser: Open Graph `og:title`, `og:description`, `og:image`, falling back to
  `twitter:*`, `<meta name="description">` and `<title>`.

Any failure is "nothing to show" (None), logged; never an exception to the worker.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter

logger = logging.getLogger("chats.previews")

URL_MAX_LENGTH = 2000
TITLE_MAX, DESCRIPTION_MAX = 300, 1000
# A link starts at a word boundary with http:// or https:// and runs to whitespace or a
# character that cannot be in one unescaped; trailing punctuation is the sentence's.
_LINK = re.compile(r"(?<![\w/])https?://[^\s<>\"'`{}|\\^]+", re.IGNORECASE)
_TRAILING = ".,;:!?)]}»>'\""
USER_AGENT = "chat-server-link-preview/1.0"
HTML_TYPES = ("text/html", "application/xhtml+xml")
REDIRECTS = (301, 302, 303, 307, 308)


def first_link(content: str) -> str | None:
    """The first http(s) link of a message's text, as written (without the sentence's
    trailing punctuation), if it is at most 2,000 characters and has a host."""
    for match in _LINK.finditer(content):
        url = match.group(0).rstrip(_TRAILING)
        try:
            host = urlsplit(url).hostname
        except ValueError:
            continue
        if host and len(url) <= URL_MAX_LENGTH:
            return url
        return None
    return None


class Refused(Exception):
    """This URL is not fetched (its scheme, its address, too many redirects...)."""


def _checked_address(host: str, port: int) -> str:
    """An address of `host` to connect to, once every one it resolves to was checked."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Refused(f"{host} does not resolve ({exc})") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise Refused(f"{host} has no address")
    if not settings.LINK_PREVIEW_ALLOW_PRIVATE:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%")[0])
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not ip.is_global or ip.is_multicast:
                raise Refused(f"{host} resolves to {ip}, not a public address")
    return addresses[0]


class _PinnedAdapter(HTTPAdapter):
    """Connects to the checked address while the TLS server name and the certificate's
    check are the URL's host (urllib3 drops both keywords for plain http)."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        pool_kwargs.update(server_hostname=self.hostname, assert_hostname=self.hostname)
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Refused("time is up")
    return left


def _get(url: str, deadline: float) -> requests.Response:
    """One request, no redirect followed, to the checked address of the URL's host."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise Refused(f"scheme {parts.scheme!r}")
    if parts.username or parts.password:
        raise Refused("user info in the URL")
    host = parts.hostname
    if not host:
        raise Refused("no host")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    address = _checked_address(host, port)
    netloc = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    target = urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))
    default_port = port == (443 if parts.scheme.lower() == "https" else 80)
    host_header = (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment: it would connect for us
    session.mount("https://", _PinnedAdapter(host))
    session.mount("http://", _PinnedAdapter(host))
    left = _remaining(deadline)
    return session.get(
        target, stream=True, allow_redirects=False, timeout=(left, left),
        headers={"Host": host_header, "User-Agent": USER_AGENT, "Accept": "text/html,application/xhtml+xml",
                 "Accept-Encoding": "gzip, deflate"},
    )


def _read_limited(response: requests.Response, deadline: float) -> bytes:
    """At most LINK_PREVIEW_MAX_BYTES of the (decompressed) body, before the deadline."""
    limit, body = settings.LINK_PREVIEW_MAX_BYTES, bytearray()
    raw = response.raw
    while len(body) < limit:
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            sock.settimeout(_remaining(deadline))
        else:
            _remaining(deadline)
        chunk = raw.read1(min(65536, limit - len(body)), decode_content=True)
        if not chunk:
            break
        body += chunk
    return bytes(body[:limit])


def fetch(url: str) -> dict | None:
    """What the page at `url` shows, `{title, description, image}`, or None (nothing to
    show, or not fetched: see the module)."""
    deadline = time.monotonic() + settings.LINK_PREVIEW_TIMEOUT
    current = url
    try:
        for hop in range(settings.LINK_PREVIEW_MAX_REDIRECTS + 1):
            response = _get(current, deadline)
            try:
                if response.status_code in REDIRECTS and response.headers.get("Location"):
                    current = urljoin(current, response.headers["Location"])
                    continue
                if response.status_code != 200:
                    raise Refused(f"status {response.status_code}")
                mime = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if mime not in HTML_TYPES:
                    raise Refused(f"not HTML ({mime or 'no type'})")
                body = _read_limited(response, deadline)
                encoding = response.encoding if "charset" in response.headers.get("Content-Type", "") else "utf-8"
            finally:
                response.close()
            return parse(body.decode(encoding or "utf-8", errors="replace"), base_url=current)
        raise Refused(f"more than {settings.LINK_PREVIEW_MAX_REDIRECTS} redirects")
    except (Refused, requests.RequestException, OSError, LookupError, ValueError) as exc:
        logger.info("no preview of %s: %s", url[:200], exc)
        return None


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.meta: dict[str, str] = {}
        self.title: list[str] = []
        self.in_title = False
        self.done = False

    def handle_starttag(self, tag, attrs):
        if self.done:
            return
        if tag == "meta":
            values = {k.lower(): (v or "") for k, v in attrs}
            key = (values.get("property") or values.get("name") or "").strip().lower()
            if key and "content" in values and key not in self.meta:
                self.meta[key] = values["content"]
        elif tag == "title" and not self.title:
            self.in_title = True
        elif tag == "body":
            self.done = True  # the tags are in the head; a body's <meta> is not the page's

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        elif tag == "head":
            self.done = True

    def handle_data(self, data):
        if self.in_title:
            self.title.append(data)


def _clean(text: str | None, limit: int) -> str | None:
    if text is None:
        return None
    text = " ".join(text.split())
    return text[:limit] or None


def parse(html: str, *, base_url: str) -> dict | None:
    """`{title, description, image}` of a page (None if it has neither title nor
    description): Open Graph first, then Twitter cards, `description`, `<title>`."""
    parser = _PageParser()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser copes with nearly anything; keep what was read
        pass
    meta = parser.meta
    title = _clean(meta.get("og:title") or meta.get("twitter:title") or "".join(parser.title), TITLE_MAX)
    description = _clean(
        meta.get("og:description") or meta.get("twitter:description") or meta.get("description"), DESCRIPTION_MAX
    )
    image = None
    raw_image = (meta.get("og:image") or meta.get("og:image:url") or meta.get("twitter:image") or "").strip()
    if raw_image:
        absolute = urljoin(base_url, raw_image)
        if urlsplit(absolute).scheme in ("http", "https") and len(absolute) <= URL_MAX_LENGTH:
            image = absolute
    if title is None and description is None:
        return None
    return {"title": title, "description": description, "image": image}
