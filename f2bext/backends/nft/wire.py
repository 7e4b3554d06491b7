"""The builders' libnftables JSON commands as nf_tables netlink messages (kernel/nftbatch.py), pure: the
commands build.py makes, and nothing else, each as libnftables would send it. A command outside
those shapes is a bug of ours, raised as ValueError before anything is sent."""

from __future__ import annotations

import socket
from typing import Any, Sequence

from ...kernel import nftbatch as nb, nftelem
from ...kernel.nftbatch import (CMP_EQ, CT_ORIGINAL, CT_PROTO_DST, ICMPX_ADMIN_PROHIBITED, META_L4PROTO, META_NFPROTO,
                                NF_DROP, PAYLOAD_NETWORK, PAYLOAD_TRANSPORT, REJECT_ICMPX)
from .build import Command

HOOKS = {"prerouting": 0, "input": 1, "forward": 2, "output": 3, "postrouting": 4}
POLICIES = {"drop": 0, "accept": 1}
KEY_TYPES = {"ipv4_addr": (7, 4), "ipv6_addr": (8, 16)}  # libnftables' datatype ids, key sizes
INET_PROTO, INET_SERVICE = (12, 1), (13, 2)
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
NFPROTO_IPV4, NFPROTO_IPV6 = 2, 10
SADDR = {"ip": (NFPROTO_IPV4, 12, 4), "ip6": (NFPROTO_IPV6, 8, 16)}  # nfproto, offset and size in the header
ELEMENTS_PER_MESSAGE = 1024  # an element list's attribute length is 16 bits: 1,024 IPv6 range ends fit
ANONYMOUS = "__set%d"  # the kernel names an anonymous set; the batch refers to it by id


class Encoder:
    """Messages of one transaction, in order; set ids numbered within it."""

    def __init__(self) -> None:
        self.messages: list[nb.Message] = []
        self._ids: dict[str, int] = {}  # sets made in this transaction
        self._next_id = 1

    def _set_id(self, name: str) -> int:
        self._ids[name] = self._next_id
        self._next_id += 1
        return self._ids[name]

    def command(self, cmd: Command) -> None:
        (op, body), = cmd.items()
        (kind, fields), = body.items()
        family = fields["family"]
        if kind == "table" and op in ("add", "delete"):
            self.messages.append(nb.table(nb.NEWTABLE if op == "add" else nb.DELTABLE, family, fields["name"]))
        elif kind == "set" and op == "add":
            key_type, key_len = KEY_TYPES[fields["type"]]
            flags = nb.NFT_SET_INTERVAL if "interval" in fields.get("flags", []) else 0
            self.messages.append(nb.add_set(family, fields["table"], fields["name"], key_type, key_len, flags,
                                            self._set_id(fields["name"])))
        elif kind in ("set", "chain") and op == "delete":
            self.messages.append(nb.delete(nb.DELSET if kind == "set" else nb.DELCHAIN, family, fields["table"],
                                           fields["name"]))
        elif kind == "set" and op == "flush":
            self.messages.append(nb.elements(nb.DELSETELEM, family, fields["table"], fields["name"], ()))
        elif kind == "chain" and op == "flush":
            self.messages.append(nb.delete(nb.DELRULE, family, fields["table"], fields["name"]))
        elif kind == "chain" and op == "add":
            self.messages.append(nb.base_chain(family, fields["table"], fields["name"], HOOKS[fields["hook"]],
                                               int(fields["prio"]), POLICIES[fields["policy"]], fields["type"]))
        elif kind == "rule" and op == "add":
            exprs = [e for expr in fields["expr"] for e in self._expr(family, fields["table"], expr)]
            self.messages.append(nb.rule(family, fields["table"], fields["chain"], exprs, fields.get("comment")))
        elif kind == "element" and op in ("add", "delete"):
            msg_type = nb.NEWSETELEM if op == "add" else nb.DELSETELEM
            name, set_id, elems = fields["name"], self._ids.get(fields["name"]), fields["elem"]
            if all(isinstance(e, str) for e in elems):  # single addresses: packed in C, a rebuild has 100,000
                packed = [_address(e) for e in elems]
                for size in {len(k) for k in packed}:
                    keys = [k for k in packed if len(k) == size]
                    for i in range(0, len(keys), ELEMENTS_PER_MESSAGE):
                        self.messages.append(nb.elements(msg_type, family, fields["table"], name, (), set_id,
                                                         nftelem.pack_elements(keys[i:i + ELEMENTS_PER_MESSAGE])))
                return
            keys = [k for elem in elems for k in _element_keys(elem)]
            for i in range(0, len(keys), ELEMENTS_PER_MESSAGE):
                self.messages.append(nb.elements(msg_type, family, fields["table"], name,
                                                 keys[i:i + ELEMENTS_PER_MESSAGE], set_id))
        else:
            raise ValueError(f"no netlink form for the command {cmd!r}")

    def _expr(self, family: str, table: str, expr: dict[str, Any]) -> list[bytes]:
        (kind, body), = expr.items()
        if kind == "counter":
            return [nb.counter()]
        if kind == "drop":
            return [nb.verdict(NF_DROP)]
        if kind == "reject" and body == {"type": "icmpx", "expr": "admin-prohibited"}:
            return [nb.reject(REJECT_ICMPX, ICMPX_ADMIN_PROHIBITED)]
        if kind != "match" or body["op"] != "==":
            raise ValueError(f"no netlink form for the expression {expr!r}")
        left, right = body["left"], body["right"]
        payload = left.get("payload", {})
        if payload.get("field") == "saddr" and isinstance(right, str) and right.startswith("@"):
            nfproto, offset, size = SADDR[payload["protocol"]]
            return [nb.meta_load(META_NFPROTO), nb.cmp(CMP_EQ, bytes([nfproto])),
                    nb.payload_load(PAYLOAD_NETWORK, offset, size), nb.lookup(right[1:], self._ids.get(right[1:]))]
        if left.get("meta", {}).get("key") == "l4proto":
            load = nb.meta_load(META_L4PROTO)
            if isinstance(right, dict):
                keys = [(bytes([PROTOCOLS[p]]), 0) for p in right["set"]]
                return [load, self._anonymous(family, table, INET_PROTO, keys, False)]
            return [load, nb.cmp(CMP_EQ, bytes([PROTOCOLS[right]]))]
        if payload == {"protocol": "th", "field": "dport"}:
            load = nb.payload_load(PAYLOAD_TRANSPORT, 2, 2)
        elif left.get("ct") == {"key": "proto-dst", "dir": "original"}:
            load = nb.ct_load(CT_PROTO_DST, CT_ORIGINAL)
        else:
            raise ValueError(f"no netlink form for the expression {expr!r}")
        if isinstance(right, int):
            return [load, nb.cmp(CMP_EQ, _port(right))]
        if "range" in right:
            low, high = right["range"]
            return [load, nb.range_eq(_port(low), _port(high))]
        ranges = [(v, v) if isinstance(v, int) else tuple(v["range"]) for v in right["set"]]
        interval = any(lo != hi for lo, hi in ranges)
        keys = _range_keys(ranges, 2) if interval else [(_port(lo), 0) for lo, _ in ranges]
        return [load, self._anonymous(family, table, INET_SERVICE, keys, interval)]

    def _anonymous(self, family: str, table: str, key: tuple[int, int], keys: list[tuple[bytes, int]],
                   interval: bool) -> bytes:
        """A constant anonymous set of `keys` made in this transaction, and the lookup of it."""
        set_id = self._next_id
        self._next_id += 1
        flags = nb.NFT_SET_ANONYMOUS | nb.NFT_SET_CONSTANT | (nb.NFT_SET_INTERVAL if interval else 0)
        self.messages.append(nb.add_set(family, table, ANONYMOUS, key[0], key[1], flags, set_id, size=len(keys)))
        for i in range(0, len(keys), ELEMENTS_PER_MESSAGE):
            self.messages.append(nb.elements(nb.NEWSETELEM, family, table, ANONYMOUS,
                                             keys[i:i + ELEMENTS_PER_MESSAGE], set_id))
        return nb.lookup(ANONYMOUS, set_id)


def _port(value: int) -> bytes:
    return value.to_bytes(2, "big")


def _range_keys(ranges: Sequence[tuple[int, int]], size: int) -> list[tuple[bytes, int]]:
    """An interval set's elements for disjoint inclusive ranges: each range's first key, and the key
    after its last flagged as an end (none for a range that runs to the last key)."""
    keys = []
    top = (1 << (8 * size)) - 1
    for low, high in sorted(ranges):
        keys.append((low.to_bytes(size, "big"), 0))
        if high < top:
            keys.append(((high + 1).to_bytes(size, "big"), nb.NFT_SET_ELEM_INTERVAL_END))
    return keys


def _address(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def _element_keys(elem: Any) -> list[tuple[bytes, int]]:
    """A set element as build.py writes it (an address, or a prefix) as the kernel's keys."""
    if isinstance(elem, str):
        return [(_address(elem), 0)]
    prefix = elem["prefix"]
    family, size = (socket.AF_INET6, 16) if ":" in prefix["addr"] else (socket.AF_INET, 4)
    low = int.from_bytes(socket.inet_pton(family, prefix["addr"]), "big")
    span = 1 << (8 * size - int(prefix["len"]))
    return _range_keys([(low, low + span - 1)], size)


def encode(cmds: Sequence[Command]) -> list[nb.Message]:
    """The messages of one transaction doing `cmds`."""
    encoder = Encoder()
    for cmd in cmds:
        encoder.command(cmd)
    return encoder.messages
