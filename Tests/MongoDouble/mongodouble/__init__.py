"""MongoDB wire-protocol test double for StreamBroker's tests (see ../README.md).

Run it with ``python3 Tests/MongoDouble/mongo_double.py ARGS`` (``mongodouble.main.main``)."""

from __future__ import annotations
