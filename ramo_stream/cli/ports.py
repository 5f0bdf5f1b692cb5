"""Whether the reward service's port can be bound, asked before minutes of start-up."""

from __future__ import annotations

import socket


def port_problem(host: str, port: int) -> str | None:
    """None if ``host:port`` can be bound, else why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            return str(e)
    return None
