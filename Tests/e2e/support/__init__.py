"""Helpers of the end-to-end suite, imported by the tests and by conftest.py (which holds only
fixtures and pytest hooks):

- waits: `wait_for` (a condition with a deadline) and `now_ms`
- names: unique topic/group names and the key -> partition hash
- net: free ports and an HTTP opener that ignores proxy settings
- ws: the WebSocket clients (`WS` on the websockets library, `RawWS` on a plain socket)
- broker: one `stream-broker` process (start, stop, SIGKILL, restart, HTTP and WS helpers)
  and the `BrokerFactory` behind the `make_broker` fixture
- mongo: the store mode, pymongo clients, and the MongoDB wire-protocol double
- haproxy: a real HAProxy in front of broker ports
- audit: the audit topic's records
- auth: credentials (tokens files, HS256/RS256/ES256 JWTs) and clients that present them
- replicas: replica env, ownership / lease / offset readers and waits (SPEC §7)
- load: consumer and publisher threads, their tallies, and measurements
"""
