"""Issue 14, item 12: the API's documentation page works offline. ``/docs`` loads every script,
style sheet and icon from this server (the swagger-ui-bundle package), none from a CDN, needs
no key, and the OpenAPI schema it shows (inlined) is also served at ``/docs/openapi.json``."""

from __future__ import annotations

import re

import httpx


def test_the_docs_page_loads_nothing_from_another_host(real_server):
    with httpx.Client(base_url=real_server.url) as browser:
        page = browser.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        referenced = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", page.text)
        assert referenced, "the page references its assets"
        assert not [url for url in referenced if "://" in url or url.startswith("//")], referenced
        for url in referenced:
            asset = browser.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 100, url
        assert '"title":"taskledger"' in page.text  # the schema is inlined in the page
        schema = browser.get("/docs/openapi.json")
        assert schema.status_code == 200 and schema.json()["info"]["title"] == "taskledger"
