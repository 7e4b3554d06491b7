"""The flood's sender, run by flood.py in the attacker's namespace: TCP SYNs from banned sources,
prebuilt Ethernet frames in an AF_PACKET TX ring. Says "ready", floods on a line on stdin, prints JSON."""

from __future__ import annotations

import argparse
import array
import ipaddress
import json
import mmap
import os
import socket
import struct
import sys
import time

HOST4, HOST6 = "198.51.100.1", "2001:db8::1"
PORTS = (25, 465, 587)
FLOOD_CPU = 0


def sources(n: int) -> list[str]:
    """n banned sources from the documentation ranges, half IPv4, half IPv6."""
    v4 = [f"{net}.{i}" for net in ("192.0.2", "203.0.113") for i in range(1, 255)]
    half = n // 2
    if not 2 <= n <= 2 * len(v4):
        raise ValueError(f"between 2 and {2 * len(v4)} sources")
    return v4[:half] + [f"2001:db8:ffff::{i + 1:x}" for i in range(n - half)]


# ---- frames -------------------------------------------------------------------------------------

def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _syn(src: bytes, dst: bytes, sport: int, dport: int, pseudo: bytes) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, dport, sport * 7919, 0, 5 << 4, 0x02, 64240, 0, 0)
    csum = _checksum(pseudo + head)
    return head[:16] + struct.pack("!H", csum) + head[18:]


def frame(src_mac: bytes, dst_mac: bytes, src: str, dst: str, sport: int, dport: int) -> bytes:
    """One Ethernet frame holding a TCP SYN, checksums right."""
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    if len(s) == 4:
        tcp = _syn(s, d, sport, dport, s + d + struct.pack("!BBH", 0, 6, 20))
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, sport, 0x4000, 64, 6, 0, s, d)
        ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
        return dst_mac + src_mac + b"\x08\x00" + ip + tcp + bytes(20)  # padded as IPv6's
    tcp = _syn(s, d, sport, dport, s + d + struct.pack("!IxxxB", 20, 6))
    ip = struct.pack("!IHBB16s16s", 6 << 28, 20, 6, 64, s, d)
    return dst_mac + src_mac + b"\x86\xdd" + ip + tcp


SOL_PACKET, PACKET_VERSION, PACKET_TX_RING, PACKET_QDISC_BYPASS, TPACKET_V2 = 263, 10, 13, 20, 1
SLOT, SLOTS = 128, 1024  # ring slots: a tpacket2_hdr (32 bytes), then the frame
TP_STATUS_SEND_REQUEST = 1


def runtime_ns(task: str) -> int:
    """Nanoseconds a task has run on a CPU (schedstat: exact, softirq it served included); 0 for no task."""
    if not task:
        return 0
    with open(f"/proc/{task}/schedstat") as f:
        return int(f.read().split()[0])


def tx_packets() -> int:
    with open("/sys/class/net/eth0/statistics/tx_packets") as f:  # `ip netns exec` mounts the namespace's /sys
        return int(f.read())


def send(args: argparse.Namespace) -> int:
    """The attacker (run in its namespace): the frames written once into a PACKET_TX_RING, say ready,
    then on "go" mark every slot and hand the ring to the kernel, again and again, never waiting for
    it; prints JSON. The kernel sends a ring per system call: the flood is bound by the kernel."""
    os.sched_setaffinity(0, {FLOOD_CPU})
    src_mac, dst_mac = bytes.fromhex(args.src_mac), bytes.fromhex(args.dst_mac)
    frames = [frame(src_mac, dst_mac, a, HOST6 if ":" in a else HOST4, 1024 + i % 60000, PORTS[i % len(PORTS)])
              for i, a in enumerate(sources(args.sources))]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
    sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    sock.setsockopt(SOL_PACKET, PACKET_TX_RING, struct.pack("IIII", 4096, SLOT * SLOTS // 4096, SLOT, SLOTS))
    sock.bind(("eth0", 0))
    ring = mmap.mmap(sock.fileno(), SLOT * SLOTS)
    for i in range(SLOTS):
        f = frames[i % len(frames)]
        struct.pack_into("II", ring, i * SLOT, 0, len(f))
        ring[i * SLOT + 32:i * SLOT + 32 + len(f)] = f
    status = memoryview(ring).cast("I")[::SLOT // 4]
    marks = array.array("I", [TP_STATUS_SEND_REQUEST]) * SLOTS
    print("ready", flush=True)
    sys.stdin.readline()
    begin, before, ran = time.monotonic(), tx_packets(), runtime_ns("thread-self")
    end = begin + args.seconds
    while time.monotonic() < end:
        status[:] = marks  # a slot still in flight is sent again: its bytes never change
        try:
            sock.send(b"", socket.MSG_DONTWAIT)
        except BlockingIOError:  # the socket's send buffer is full of frames in flight
            continue
    elapsed, ran = time.monotonic() - begin, runtime_ns("thread-self") - ran
    print(json.dumps({"sent": tx_packets() - before, "seconds": round(elapsed, 3), "run_ns": ran}), flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--sources", type=int, required=True)
    p.add_argument("--src-mac", required=True)
    p.add_argument("--dst-mac", required=True)
    return send(p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
