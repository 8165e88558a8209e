"""Local networking: free ports, the kernel's socket send buffer, and HTTP without proxies."""

from __future__ import annotations

import socket
import urllib.request


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def max_socket_send_buffer() -> int:
    """The most a TCP send buffer autotunes to (tcp_wmem's maximum): what the kernel can hold
    for a client that stops reading, before the broker's own queue fills."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


# urllib must never go through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
