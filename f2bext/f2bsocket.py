"""A small client for fail2ban-server's control socket (the protocol fail2ban-client speaks)."""

from __future__ import annotations

import os
import pickle
import socket
from typing import Any, Optional, Sequence

END = b"<F2B_END_COMMAND>"
CLOSE = b"<F2B_CLOSE_COMMAND>"
DEFAULT_SOCKET = "/var/run/fail2ban/fail2ban.sock"


def socket_path() -> str:
    return os.environ.get("F2BEXT_FAIL2BAN_SOCKET", DEFAULT_SOCKET)


class Fail2banSocket:
    """Send commands, get fail2ban's answer; raises OSError when no server answers."""

    def __init__(self, path: Optional[str] = None, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path or socket_path())

    def __enter__(self) -> "Fail2banSocket":
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._sock.sendall(CLOSE + END)
        except OSError:
            pass
        self._sock.close()

    def send(self, command: Sequence[str]) -> Any:
        self._sock.sendall(pickle.dumps([str(c) for c in command], pickle.HIGHEST_PROTOCOL) + END)
        data = b""
        while not data.endswith(END):
            chunk = self._sock.recv(65536)
            if not chunk:
                raise OSError("fail2ban closed the connection")
            data += chunk
        # The answer comes from fail2ban-server running as root on a root-only socket.
        code, answer = pickle.loads(data[:-len(END)])
        if code != 0:
            raise OSError(f"fail2ban refused {command[0]}: {answer}")
        return answer
