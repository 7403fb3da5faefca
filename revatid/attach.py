"""`revatictl attach`: move a running process tree onto a session clock.

A Python process started with the hook environment but no session is dormant: it runs on real
time and listens on an abstract Unix datagram socket named after its pid. Attaching sends each
process of the tree (the pid and its descendants) the session id; the process then joins over
the daemon socket and switches its hooks on (see revati.adapters.session.dormant).
"""

from __future__ import annotations

import os
import socket

import msgpack


def address(pid: int) -> str:
    return f"\0revati-attach-{os.getuid()}-{pid}"


def descendants(pid: int) -> list[int]:
    """pid and every process below it, parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    order, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        order.append(p)
        todo.extend(sorted(children.get(p, [])))
    return order


def signal_tree(pid: int, session: str, socket_path: str | None = None) -> list[int]:
    """Tell every dormant process of the tree to join `session`; returns those told."""
    from revati.revatid.paths import default_socket

    body = msgpack.packb({"session": session, "socket": socket_path or str(default_socket())})
    moved = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        for p in descendants(pid):
            try:
                sock.sendto(body, address(p))
            except OSError:
                continue  # not a dormant Revati process
            moved.append(p)
    return moved
