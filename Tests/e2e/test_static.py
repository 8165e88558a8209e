"""What the broker serves to browsers over plain HTTP (SPEC §13, §14): the dashboard at `/` and
its files under `/dashboard/`, and the JavaScript client at `/js/streambroker.js`, built into
the executable (nothing is read from disk at run time), cacheable by ETag, open in every auth
mode (they hold no data), the page locked to the broker's own origin."""

from __future__ import annotations

import http.client

from support.auth import Credentials
from support.broker import REPO


def test_js_client_is_served_byte_for_byte(shared):
    status, headers, body = shared.http_raw("GET", "/js/streambroker.js")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert body == (REPO / "clients/js/streambroker.js").read_bytes()
    status, headers, body = shared.http_raw("GET", "/js/streambroker.d.ts")
    assert status == 200 and body == (REPO / "clients/js/streambroker.d.ts").read_bytes()


def test_dashboard_page_and_its_files(shared):
    status, headers, body = shared.http_raw("GET", "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert body == (REPO / "web/index.html").read_bytes()
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self';" in csp and "ws:" not in csp
    assert "base-uri 'none'" in csp and "frame-ancestors 'none'" in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path in sorted((REPO / "web").iterdir()):
        status, headers, body = shared.http_raw("GET", f"/dashboard/{path.name}")
        assert status == 200, path.name
        assert body == path.read_bytes(), path.name
    css = shared.http_raw("GET", "/dashboard/dashboard.css")[1]["Content-Type"]
    assert css.startswith("text/css")


def test_etag_revalidation_and_head(shared):
    status, headers, body = shared.http_raw("GET", "/js/streambroker.js")
    etag = headers["ETag"]
    assert etag.startswith('"') and headers["Cache-Control"] == "no-cache"
    status, headers, body = shared.http_raw("GET", "/js/streambroker.js", headers={"If-None-Match": etag})
    assert status == 304 and body == b""
    status, _, body = shared.http_raw("GET", "/js/streambroker.js", headers={"If-None-Match": '"other"'})
    assert status == 200 and body
    # HEAD, then GET on the same kept-alive connection: HEAD's answer has GET's headers and
    # no body bytes (any would be read as the start of the next answer).
    conn = http.client.HTTPConnection("127.0.0.1", shared.port, timeout=5)
    try:
        conn.request("HEAD", "/")
        head = conn.getresponse()
        assert head.status == 200 and head.read() == b""
        assert head.getheader("Content-Type").startswith("text/html")
        page = (REPO / "web/index.html").read_bytes()
        assert head.getheader("Content-Length") == str(len(page))
        conn.request("GET", "/js/streambroker.js")
        got = conn.getresponse()
        assert got.status == 200 and got.read() == (REPO / "clients/js/streambroker.js").read_bytes()
    finally:
        conn.close()


def test_unknown_files_are_404(shared):
    for path in ("/dashboard/nope.js", "/js/nope.js", "/js/", "/dashboard/../Package.swift", "/js/README.md"):
        status, _, _ = shared.http_raw("GET", path)
        assert status == 404, path


def test_open_when_authentication_is_on(make_broker, tmp_path):
    creds = Credentials("token", tmp_path / "creds")
    creds.add("reader", subscribe=[">"])
    broker = make_broker(**creds.env())
    for path in ("/", "/js/streambroker.js", "/dashboard/dashboard.js"):
        assert broker.http_raw("GET", path)[0] == 200, path
    # ... while the data behind them is not.
    assert broker.http_raw("GET", "/stats")[0] == 401


def test_js_client_may_be_imported_by_other_origins_the_dashboard_may_not(shared):
    assert shared.http_raw("GET", "/js/streambroker.js")[1]["Access-Control-Allow-Origin"] == "*"
    for path in ("/", "/dashboard/dashboard.js", "/stats"):
        assert shared.http_raw("GET", path)[1].get("Access-Control-Allow-Origin") is None, path
