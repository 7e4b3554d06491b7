"""Small programs the lab runs inside its namespaces: an SMTP-like server that logs failed logins the
way postfix does, and clients that probe, fail logins, and hold a session open.

    python3 -m f2bext.lab.tools serve --log FILE --ports 25,465,587 [--udp 5353]   (UDP: echoes datagrams)
    python3 -m f2bext.lab.tools probe HOST PORT [--source ADDR] [--udp | --sctp]
                                                    exit 0 open, 1 refused/unreachable, 2 timeout
    python3 -m f2bext.lab.tools fail-logins HOST PORT N
    python3 -m f2bext.lab.tools hold HOST PORT STATUSFILE   status: "open", then "ended: <why>"
    python3 -m f2bext.lab.tools probe-until HOST PORT STOPFILE   connects until STOPFILE exists, then
                                                    prints "ready", at the end "tried N through K"
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
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


def serve(logpath: str, ports: list[int], udp_ports: list[int]) -> None:
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

    def echo(port: int) -> None:
        srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        srv.bind(("::", port))
        while True:
            data, addr = srv.recvfrom(512)
            srv.sendto(data, addr)

    for port in ports:
        threading.Thread(target=listen, args=(port,), daemon=True).start()
    for port in udp_ports:
        threading.Thread(target=echo, args=(port,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def probe(host: str, port: int, source: str = "", timeout: float = 2.0, udp: bool = False,
          sctp: bool = False) -> int:
    if udp:
        return probe_udp(host, port, source, timeout)
    if sctp:
        return probe_sctp(host, port, timeout)
    try:
        with socket.create_connection((host, port), timeout=timeout,
                                      source_address=(source, 0) if source else None) as s:
            s.recv(64)
        return 0
    except socket.timeout:
        return 2
    except OSError:
        return 1


def probe_udp(host: str, port: int, source: str, timeout: float) -> int:
    """A datagram to an echo port: 0 when it comes back; an ICMP error on the connected socket is 1."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.bind((source, 0))
        s.connect((host, port))
        try:
            s.send(b"ping")
            return 0 if s.recv(64) == b"ping" else 1
        except socket.timeout:
            return 2
        except OSError:
            return 1


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def probe_sctp(host: str, port: int, timeout: float) -> int:
    """An SCTP INIT over IPv4, sent raw (the lab's kernel may have no SCTP module), and the answer read
    raw: 0 when it reached the host's stack (an INIT ACK, or "protocol unreachable" from a host without
    SCTP), 1 when refused ("administratively prohibited"), 2 when nothing came back."""
    init = struct.pack("!BBHIIHHI", 1, 0, 20, 0x1F2B0001, 65535, 1, 1, 1)
    header = struct.pack("!HHII", 40000, port, 0, 0)
    packet = header[:8] + struct.pack("<I", crc32c(header + init)) + init
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as icmp, \
            socket.socket(socket.AF_INET, socket.SOCK_RAW, 132) as raw:
        raw.sendto(packet, (host, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            icmp.settimeout(left)
            try:
                reply, (sender, _) = icmp.recvfrom(2048)
            except socket.timeout:
                break
            at = (reply[0] & 0x0F) * 4
            kind, code = reply[at], reply[at + 1]
            inner = reply[at + 8:]
            if sender == host and kind == 3 and len(inner) >= 20 and inner[9] == 132:
                return 0 if code == 2 else 1  # 2: protocol unreachable
        return 2


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


def probe_until(host: str, port: int, stopfile: str) -> int:
    """TCP connects to host:port one after another, up to 200 a second, until `stopfile` exists; then
    say how many were tried and how many got through (an attacker probing while the firewall moves)."""
    tried = through = 0
    print("ready", flush=True)
    while not os.path.exists(stopfile):
        tried += 1
        try:
            socket.create_connection((host, port), timeout=0.1).close()
            through += 1
        except OSError:
            pass
        time.sleep(0.005)
    print(f"tried {tried} through {through}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="f2bext.lab.tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve"); s.add_argument("--log", required=True); s.add_argument("--ports", required=True)
    s.add_argument("--udp", default="")
    s = sub.add_parser("probe"); s.add_argument("host"); s.add_argument("port", type=int); s.add_argument("--source", default="")
    s.add_argument("--udp", action="store_true"); s.add_argument("--sctp", action="store_true")
    s = sub.add_parser("fail-logins"); s.add_argument("host"); s.add_argument("port", type=int); s.add_argument("count", type=int)
    s = sub.add_parser("hold"); s.add_argument("host"); s.add_argument("port", type=int); s.add_argument("status")
    s = sub.add_parser("probe-until"); s.add_argument("host"); s.add_argument("port", type=int); s.add_argument("stopfile")
    a = p.parse_args(argv)
    if a.cmd == "serve":
        serve(a.log, [int(x) for x in a.ports.split(",")], [int(x) for x in a.udp.split(",") if x])
    if a.cmd == "probe":
        return probe(a.host, a.port, a.source, udp=a.udp, sctp=a.sctp)
    if a.cmd == "fail-logins":
        return fail_logins(a.host, a.port, a.count)
    if a.cmd == "probe-until":
        return probe_until(a.host, a.port, a.stopfile)
    return hold(a.host, a.port, a.status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
