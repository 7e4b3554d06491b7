"""iptables-legacy's filter table, read from the kernel (IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES through
ctypes) and fingerprinted: iptables-legacy keeps no generation, and its rules stand in for one."""

from __future__ import annotations

import errno
import os
import socket
import struct

from ..errors import KernelError

# Each entry of the table blob carries packet counters, which move with traffic, not with the rules:
# they are zeroed first.

IPT_SO_GET_INFO, IPT_SO_GET_ENTRIES = 64, 65  # ip6t_ the same, at SOL_IPV6
XT_TABLE_INFO = struct.Struct("=32sI5I5III")  # name, valid hooks, hook entries, underflows, entries, size
XT_GET_ENTRIES = struct.Struct("=32sI4x")  # name, size, then the entries (aligned for their u64 counters)
# Per family: where an entry's next_offset and its counters (two u64) sit.
XT_ENTRY_LAYOUT = {4: (90, 96), 6: (142, 152)}


def table_fingerprint(family: int, blob: bytes) -> bytes:
    """The entries of a table as getsockopt returned them, their counters zeroed."""
    next_at, counters_at = XT_ENTRY_LAYOUT[family]
    out = bytearray(blob)
    offset = 0
    while offset + counters_at + 16 <= len(out):
        out[offset + counters_at:offset + counters_at + 16] = bytes(16)
        step = struct.unpack_from("=H", out, offset + next_at)[0]
        if step == 0:
            break
        offset += step
    return bytes(out)


_libc = None


def legacy_fingerprint(family: int) -> bytes:
    """The legacy filter table of `family`, fingerprinted: two getsockopt calls on a raw socket."""
    import ctypes  # getsockopt with a filled-in buffer (the table's name), which Python's cannot send
    global _libc
    _libc = _libc or ctypes.CDLL(None, use_errno=True)
    level = socket.IPPROTO_IP if family == 4 else socket.IPPROTO_IPV6
    try:
        sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as e:
        raise KernelError("cannot read the iptables-legacy filter table", e.strerror or str(e)) from None
    with sock:
        def get(opt: int, buf: bytes) -> bytes:
            data, size = ctypes.create_string_buffer(buf, len(buf)), ctypes.c_uint(len(buf))
            if _libc.getsockopt(sock.fileno(), level, opt, data, ctypes.byref(size)) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code))
            return data.raw[:size.value]
        try:
            for _ in range(5):
                info = get(IPT_SO_GET_INFO, XT_TABLE_INFO.pack(b"filter", 0, *[0] * 10, 0, 0))
                size = XT_TABLE_INFO.unpack(info)[-1]
                try:
                    blob = get(IPT_SO_GET_ENTRIES, XT_GET_ENTRIES.pack(b"filter", size) + bytes(size))
                except OSError as e:
                    if e.errno == errno.EAGAIN:  # the table was replaced between the two reads
                        continue
                    raise
                return table_fingerprint(family, blob[XT_GET_ENTRIES.size:])
        except OSError as e:
            raise KernelError("cannot read the iptables-legacy filter table", e.strerror) from None
    raise KernelError("cannot read the iptables-legacy filter table", "it kept changing")
