"""Sockets in another network namespace: the lab API server's door into the lab's node namespace.

A thread enters the namespace (setns on itself only), makes the socket, and goes back; the socket
stays in the namespace it was made in. Used to listen on the node IP (where the agent pod reaches the
API server, as a pod reaches `kubernetes.default`) and to dial a pod IP for `pods/proxy`.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def socket_in(netns: str | Path, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket in the network namespace `netns` (a name under /run/netns, or a path)."""
    path = Path(netns) if "/" in str(netns) else Path("/run/netns") / str(netns)
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        target = os.open(path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                result.append(socket.socket(family, kind))
            finally:
                _setns(own)
        except BaseException as exc:
            result.append(exc)
        finally:
            os.close(own)
            os.close(target)

    # a thread of its own: it ends after, so no pooled thread is ever left in the wrong namespace
    with _lock:
        thread = threading.Thread(target=make, name="podnat-netns")
        thread.start()
        thread.join()
    made = result[0]
    if isinstance(made, BaseException):
        raise made
    return made
