"""Who is on the other end of the control socket, and may they change things?

The kernel tells us the peer's uid and gid (SO_PEERCRED); nothing the client
sends is trusted. Reading is open to anyone who can connect (the socket's mode
already limits that); mutating calls need root, the daemon's own uid, or
membership of the configured control group.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket | None) -> PeerCredentials | None:
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid, uid, gid)


def may_mutate(peer: PeerCredentials | None, control_group: str | None) -> bool:
    if peer is None:
        return False
    if peer.uid in (0, os.getuid()):
        return True
    if control_group is None:
        return False
    try:
        group = grp.getgrnam(control_group)
    except KeyError:
        return False
    if peer.gid == group.gr_gid:
        return True
    try:
        user = pwd.getpwuid(peer.uid).pw_name
    except KeyError:
        return False
    return user in group.gr_mem
