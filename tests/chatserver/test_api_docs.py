"""The API docs (`/api/docs/`, Swagger UI; `/api/redoc/`, ReDoc) work without internet:
every script, style sheet, icon and font they load is served by this server."""

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from django.test import Client


class _References(HTMLParser):
    """Where a page loads things from: `src` and `href` of every tag, and `spec-url`."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]


def _body(response) -> str:
    content = b"".join(response.streaming_content) if response.streaming else response.content
    return content.decode()


def _get(client: Client, url: str):
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response


@pytest.mark.parametrize("page, assets", [("/api/docs/", 4), ("/api/redoc/", 2)])
def test_the_docs_load_everything_from_this_server(page, assets):
    client = Client()

    # when
    html = _body(_get(client, page))

    # then: the page names no other host, not even in its inline script
    assert re.findall(r"(?:https?:)?//[\w.-]+", html) == []
    parser = _References()
    parser.feed(html)
    loaded = [url for url in parser.urls if not url.startswith("data:")]
    assert len(loaded) == assets, loaded
    for url in loaded:
        assert urlsplit(url).netloc == "" and url.startswith(("/static/", "/api/schema/")), url
        response = _get(client, url)
        if url.endswith(".css"):
            # what a style sheet pulls in (fonts, images) is inline or beside it
            refs = re.findall(r"url\(\s*['\"]?([^'\")]+)", _body(response))
            assert [r for r in refs if not r.startswith("data:") and urlsplit(r).netloc] == []


def test_swagger_ui_fetches_the_schema_from_here_and_nothing_from_its_validator():
    html = _body(_get(Client(), "/api/docs/"))

    assert 'url: "/api/schema/"' in html
    assert '"validatorUrl": null' in html
    assert _get(Client(), "/api/schema/")["Content-Type"].startswith("application/vnd.oai.openapi")
