"""Small programs the lab runs inside its namespaces: an SMTP-like server that logs failed logins the
way postfix does, and clients that probe, fail logins, and hold a session open.

    python3 -m f2bext.labtools serve --log FILE --ports 25,465,587
    python3 -m f2bext.labtools probe HOST PORT [--source ADDR]   exit 0 open, 1 refused/unreachable, 2 timeout
    python3 -m f2bext.labtools fail-logins HOST PORT N
    python3 -m f2bext.labtools hold HOST PORT STATUSFILE   status: "open", then "ended: <why>"
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time


def _log_line(path: str, text: str) -> None:
    stamp = time.strftime("%b %d %H:%M:%S")
    with open(path, "a") as log:
        log.write(f"{stamp} lab postfix/smtpd[{os.getpid()}]: {text}\n")


def _peer(addr: tuple) -> str:
    host = addr[0]
    return host[7:] if host.startswith("::ffff:") else host


def _session(conn: socket.socket, addr: tuple, logpath: str, port: int) -> None:
    peer = _peer(addr)
    _log_line(logpath, f"connect from unknown[{peer}] port {port}")
    why = "QUIT"
    try:
        conn.sendall(b"220 lab.example ESMTP\r\n")
        for line in conn.makefile("rb"):
            verb = line.strip().upper()
            if verb.startswith(b"AUTH"):
                _log_line(logpath, f"warning: unknown[{peer}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6")
                conn.sendall(b"535 5.7.8 Error: authentication failed: UGFzc3dvcmQ6\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 2.0.0 Bye\r\n")
                break
            else:
                conn.sendall(b"250 lab.example\r\n")
        else:
            why = "peer closed"
    except OSError as e:
        why = e.strerror or type(e).__name__
    finally:
        conn.close()
    _log_line(logpath, f"disconnect from unknown[{peer}] port {port} ({why})")


def serve(logpath: str, ports: list[int]) -> None:
    """Dual-stack listeners; each session in its own thread, its end logged with the reason."""
    def listen(port: int) -> None:
        srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.bind(("::", port))
        srv.listen(64)
        while True:
            conn, addr = srv.accept()
            threading.Thread(target=_session, args=(conn, addr, logpath, port), daemon=True).start()

    for port in ports:
        threading.Thread(target=listen, args=(port,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def probe(host: str, port: int, source: str = "", timeout: float = 2.0) -> int:
    try:
        with socket.create_connection((host, port), timeout=timeout,
                                      source_address=(source, 0) if source else None) as s:
            s.recv(64)
        return 0
    except socket.timeout:
        return 2
    except OSError:
        return 1


def fail_logins(host: str, port: int, count: int) -> int:
    with socket.create_connection((host, port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()
        for _ in range(count):
            s.sendall(b"AUTH LOGIN\r\n")
            f.readline()
        s.sendall(b"QUIT\r\n")
    return 0


def hold(host: str, port: int, status: str) -> int:
    """Hold a session and keep talking on it; write how it ended."""
    def say(text: str) -> None:
        with open(status + ".tmp", "w") as f:
            f.write(text)
        os.replace(status + ".tmp", status)

    s = socket.create_connection((host, port), timeout=5)
    f = s.makefile("rb")
    f.readline()
    say("open")
    s.settimeout(1.0)
    try:
        while True:
            s.sendall(b"NOOP\r\n")
            if not f.readline():
                say("ended: closed by server")
                return 0
            time.sleep(0.2)
    except socket.timeout:
        say("ended: no answer")
    except OSError as e:
        say(f"ended: {e.strerror or type(e).__name__}")
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="f2bext.labtools")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve"); s.add_argument("--log", required=True); s.add_argument("--ports", required=True)
    s = sub.add_parser("probe"); s.add_argument("host"); s.add_argument("port", type=int); s.add_argument("--source", default="")
    s = sub.add_parser("fail-logins"); s.add_argument("host"); s.add_argument("port", type=int); s.add_argument("count", type=int)
    s = sub.add_parser("hold"); s.add_argument("host"); s.add_argument("port", type=int); s.add_argument("status")
    a = p.parse_args(argv)
    if a.cmd == "serve":
        serve(a.log, [int(x) for x in a.ports.split(",")])
    if a.cmd == "probe":
        return probe(a.host, a.port, a.source)
    if a.cmd == "fail-logins":
        return fail_logins(a.host, a.port, a.count)
    return hold(a.host, a.port, a.status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
