"""Example service publishing to StreamBroker through the transactional outbox (SPEC §1).

Once a second it "places an order": in ONE MongoDB transaction it inserts the business row into
`shop.orders` and the event that announces it into the outbox collection `shop.outbox`. Either
both are written or neither is, so no order is ever stored without its event, nor an event
announced for an order that does not exist. The service never talks to the broker: a broker
started with `BUS_OUTBOX=shop.outbox` drains the outbox into the log (the row's `_id` becomes
the event `id`, so a drain that is retried does not publish twice) and deletes the row.

Outbox row: {_id, topic, key?, headers?, payload, createdTs (epoch ms)}.

Environment: MONGO_URL (a replica set: transactions need one), OUTBOX (db.collection, default
shop.outbox), ORDERS (db.collection, default shop.orders), TOPIC (default orders.created),
INTERVAL_S (default 1), COUNT (stop after this many orders; default 0 = run forever).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
import uuid

from pymongo import MongoClient, WriteConcern
from pymongo.errors import CollectionInvalid, PyMongoError
from pymongo.read_concern import ReadConcern

MONGO_URL = os.environ.get("MONGO_URL", "mongodb://localhost:27017/?replicaSet=rs0")
OUTBOX = os.environ.get("OUTBOX", "shop.outbox")
ORDERS = os.environ.get("ORDERS", "shop.orders")
TOPIC = os.environ.get("TOPIC", "orders.created")
INTERVAL_S = float(os.environ.get("INTERVAL_S", "1"))
COUNT = int(os.environ.get("COUNT", "0"))

stopping = False


def log(message: str) -> None:
    print(f"outbox-writer: {message}", flush=True)


def on_signal(signum, _frame) -> None:
    # `docker compose stop` sends SIGTERM; as PID 1 Python would otherwise ignore it.
    global stopping
    stopping = True


def collection(client: MongoClient, namespace: str):
    """`db.collection` → the collection, with majority writes (what the broker reads)."""
    db_name, dot, coll_name = namespace.partition(".")
    if not dot or not db_name or not coll_name:
        sys.exit(f"outbox-writer: '{namespace}' must be db.collection")
    return client[db_name].get_collection(coll_name, write_concern=WriteConcern("majority"))


def ensure_exists(coll) -> None:
    # MongoDB >= 4.4 can create collections inside a transaction, but creating them up front
    # keeps the first transaction simple and lets the broker watch the outbox from the start.
    try:
        coll.database.create_collection(coll.name)
    except CollectionInvalid:
        pass  # already there


def place_order(session, orders, outbox, n: int) -> dict:
    """One order and its event; called by `with_transaction`, which retries it as a whole."""
    now_ms = int(time.time() * 1000)
    customer = f"cust-{random.randint(1, 20)}"
    order = {
        "_id": f"order-{uuid.uuid4().hex[:12]}",
        "customer": customer,
        "items": random.randint(1, 5),
        "amountCents": random.randint(500, 50_000),
        "status": "created",
        "createdTs": now_ms,
    }
    # 1. the business write
    orders.insert_one(order, session=session)
    # 2. the event, in the same transaction. The key keeps one customer's events in order (one
    #    partition); headers are string → string.
    row = {
        "_id": str(uuid.uuid4()),  # becomes the event id: the broker's idempotency key
        "topic": TOPIC,
        "key": customer,
        "headers": {"source": "outbox-writer", "content-type": "application/json", "seq": str(n)},
        "payload": {
            "orderId": order["_id"],
            "customer": customer,
            "items": order["items"],
            "amountCents": order["amountCents"],
        },
        "createdTs": now_ms,
    }
    outbox.insert_one(row, session=session)
    return row


def main() -> None:
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    client = MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000)
    orders = collection(client, ORDERS)
    outbox = collection(client, OUTBOX)
    log(f"writing one order every {INTERVAL_S}s to {ORDERS} with its event ({TOPIC}) in {OUTBOX}")

    ready = False
    n = 0
    while not stopping and (COUNT == 0 or n < COUNT):
        try:
            if not ready:
                ensure_exists(orders)
                ensure_exists(outbox)
                ready = True
            with client.start_session() as session:
                row = session.with_transaction(
                    lambda s: place_order(s, orders, outbox, n + 1),
                    read_concern=ReadConcern("snapshot"),
                    write_concern=WriteConcern("majority"),
                )
            n += 1
            log(f"order {row['payload']['orderId']} for {row['key']} -> outbox row {row['_id']}")
        except PyMongoError as exc:
            # MongoDB restarting, electing a primary, ...: with_transaction has already retried
            # what is safe to retry; log it and carry on with the next order.
            log(f"transaction failed, retrying: {exc}")
        # Sleep in small steps so that SIGTERM stops the loop promptly.
        deadline = time.monotonic() + INTERVAL_S
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    client.close()
    log(f"stopped after {n} orders")


if __name__ == "__main__":
    main()
