"""End-to-end fixtures and hooks for StreamBroker (the helpers live in `support/`).

Each test starts the real `stream-broker` executable (path from STREAM_BROKER_BIN, default
<repo>/.build/debug/stream-broker) on a free port with its own data directory, and talks to it
over real WebSocket and HTTP connections. See /work/shared/SPEC.md (sections 5, 6, 8, 9).

Store mode: E2E_STORE=mongo runs every test with the broker on MongoDB. With MONGO_URL set,
that server is used; otherwise the MongoDB wire-protocol double (Tests/MongoDouble) is started
for the session and stopped afterwards.
"""

from __future__ import annotations

import os
import shutil

import pytest

from support.broker import Broker, BrokerFactory
from support.haproxy import HAProxy
from support.mongo import start_double, store_mode


# --------------------------------------------------------------------------------------------
# brokers


@pytest.fixture
def make_broker(tmp_path_factory, request):
    """`make_broker(BUS_X="1", ...)` starts a broker with env overrides; all are stopped at the end."""
    factory = BrokerFactory(tmp_path_factory)
    request.node._brokers = factory.brokers
    yield factory
    factory.cleanup()


@pytest.fixture
def broker(make_broker) -> Broker:
    """A fresh broker with the default configuration, for one test."""
    return make_broker()


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory):
    """One broker for a whole module, for tests that are independent by topic name."""
    factory = BrokerFactory(tmp_path_factory)
    b = factory(BUS_MAX_BAD_FRAMES="1000")
    yield b
    factory.cleanup()


@pytest.fixture
def shared(shared_broker, request) -> Broker:
    request.node._brokers = [shared_broker]
    return shared_broker


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        brokers = getattr(item, "_brokers", None) or []
        for i, b in enumerate(brokers):
            report.sections.append((f"broker log #{i} (port {b.port})", b.log_tail()))


# --------------------------------------------------------------------------------------------
# HAProxy


@pytest.fixture
def make_haproxy():
    """`make_haproxy(ports, balance="leastconn")` starts HAProxy in front of broker ports;
    all are stopped at the end."""
    started: list[HAProxy] = []

    def factory(ports, balance="leastconn") -> HAProxy:
        h = HAProxy(ports, balance).start()
        started.append(h)
        return h

    yield factory
    for h in started:
        h.stop()
        shutil.rmtree(h.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# store mode


@pytest.fixture(scope="session", autouse=True)
def mongo_store(tmp_path_factory):
    """In MongoDB mode without MONGO_URL, one double for the whole session."""
    if store_mode() != "mongo" or os.environ.get("MONGO_URL"):
        yield None
        return
    double = start_double(tmp_path_factory.mktemp("mongo-double"))
    os.environ["MONGO_URL"] = double.url
    try:
        yield double
    finally:
        os.environ.pop("MONGO_URL", None)
        double.stop(timeout=15)


def pytest_report_header(config):
    return f"store mode: {store_mode()}"


# --------------------------------------------------------------------------------------------
# a real headless browser


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module (support/browser.py)."""
    from support.browser import Browser

    b = Browser()
    yield b
    b.quit()
