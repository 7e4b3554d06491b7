"""One nf_tables table read over netlink (NFT_MSG_GETTABLE, GETSET, GETCHAIN, GETRULE, GETSETELEM): its
sets, chains and rules as the kernel holds them, rules as their expressions, and the elements of the
anonymous sets the rules look up. No library, no cache, no JSON: a check of our table at every ruleset
change costs a few dumps, and a process that only checks never loads libnftables (5 ms, 3 MiB)."""

from __future__ import annotations

import errno
import struct
from typing import Callable, NamedTuple, Optional

from .netlink import ATTR, NETLINK_NETFILTER, NFGEN, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, Socket, attrs, message
from .nftbatch import (NFT_SET_ANONYMOUS, NFTA_CHAIN_HOOK, NFTA_CHAIN_NAME, NFTA_CHAIN_POLICY, NFTA_CHAIN_TABLE,
                       NFTA_CHAIN_TYPE, NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_EXPR_DATA, NFTA_EXPR_NAME,
                       NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS,
                       NFTA_RULE_TABLE, NFTA_RULE_USERDATA, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY,
                       NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_FLAGS,
                       NFTA_SET_KEY_LEN, NFTA_SET_KEY_TYPE, NFTA_SET_NAME, NFTA_SET_TABLE, NFTA_VERDICT_CODE,
                       NFTNL_UDATA_RULE_COMMENT)
from .nftbatch import name_attr as _name
from .nftgen import NFPROTO, pack_gettable, parse_generation, parse_table, pack_getgen

NFT_MSG_GETCHAIN, NFT_MSG_GETRULE, NFT_MSG_GETSET, NFT_MSG_GETSETELEM = (10 << 8) | 4, (10 << 8) | 7, \
    (10 << 8) | 10, (10 << 8) | 13
# What only a dump carries (the rest is packed by nftbatch, and named there).
NFTA_CHAIN_HANDLE, NFTA_RULE_HANDLE, NFTA_SET_HANDLE, NFTA_SET_ELEM_KEY_END = 2, 3, 16, 10
U32 = struct.Struct(">L")
TRIES = 50  # reads of the whole table (about a millisecond each) before a storm of changes wins


class Set(NamedTuple):
    name: str
    handle: int
    flags: int
    key_type: int
    key_len: int


class Chain(NamedTuple):
    name: str
    handle: int
    hook: Optional[int]  # None: a regular chain
    priority: Optional[int]
    policy: Optional[int]  # NF_DROP 0, NF_ACCEPT 1
    type: Optional[str]


class Expr(NamedTuple):
    """One expression of a rule: its name and its attributes' payloads by type (nested ones raw)."""
    name: str
    attrs: dict[int, bytes]

    def u32(self, kind: int) -> Optional[int]:
        return _u32(self.attrs.get(kind))

    def u8(self, kind: int) -> Optional[int]:
        value = self.attrs.get(kind, b"")
        return value[0] if len(value) == 1 else None

    def text(self, kind: int) -> Optional[str]:
        value = self.attrs.get(kind)
        return None if value is None else value.split(b"\0", 1)[0].decode(errors="replace")

    def data(self, kind: int) -> Optional[bytes]:
        """The value in an nft_data attribute (NFTA_DATA_VALUE inside `kind`)."""
        return nested(self.attrs.get(kind, b"")).get(NFTA_DATA_VALUE)

    def verdict(self, kind: int) -> Optional[int]:
        """The verdict code in an nft_data attribute (NFTA_DATA_VERDICT, NFTA_VERDICT_CODE inside `kind`)."""
        code = nested(nested(self.attrs.get(kind, b"")).get(NFTA_DATA_VERDICT, b"")).get(NFTA_VERDICT_CODE, b"")
        return _u32(code, signed=True)


class Rule(NamedTuple):
    chain: str
    handle: int
    exprs: tuple[Expr, ...]
    comment: Optional[str]


class Element(NamedTuple):
    key: bytes
    flags: int
    key_end: Optional[bytes]  # a range in one element (sets of concatenations); None otherwise


class Dump(NamedTuple):
    """A table's objects; `handle` None when there is no such table. `elements`: of anonymous sets only."""
    handle: Optional[int]
    sets: list[Set]
    chains: list[Chain]
    rules: list[Rule]
    elements: dict[str, list[Element]]


def nested(data: bytes) -> dict[int, bytes]:
    return {kind: data[a:b] for kind, a, b in attrs(data, 0, len(data))}


def _text(value: Optional[bytes]) -> str:
    return (value or b"").split(b"\0", 1)[0].decode(errors="replace")


def _u32(value: Optional[bytes], signed: bool = False) -> Optional[int]:
    return struct.unpack(">l" if signed else ">L", value)[0] if value and len(value) == 4 else None


def _u64(value: Optional[bytes]) -> int:
    return struct.unpack(">Q", value)[0] if value and len(value) == 8 else 0


def _fields(payload: bytes) -> dict[int, bytes]:
    return nested(payload[NFGEN.size:])


def parse_set(payload: bytes) -> Set:
    f = _fields(payload)
    return Set(_text(f.get(NFTA_SET_NAME)), _u64(f.get(NFTA_SET_HANDLE)), _u32(f.get(NFTA_SET_FLAGS)) or 0,
               _u32(f.get(NFTA_SET_KEY_TYPE)) or 0, _u32(f.get(NFTA_SET_KEY_LEN)) or 0)


def parse_chain(payload: bytes) -> Chain:
    f = _fields(payload)
    hook = nested(f[NFTA_CHAIN_HOOK]) if NFTA_CHAIN_HOOK in f else {}
    return Chain(_text(f.get(NFTA_CHAIN_NAME)), _u64(f.get(NFTA_CHAIN_HANDLE)), _u32(hook.get(NFTA_HOOK_HOOKNUM)),
                 _u32(hook.get(NFTA_HOOK_PRIORITY), signed=True), _u32(f.get(NFTA_CHAIN_POLICY)),
                 _text(f[NFTA_CHAIN_TYPE]) if NFTA_CHAIN_TYPE in f else None)


def parse_rule(payload: bytes) -> Rule:
    f = _fields(payload)
    exprs = []
    listed = f.get(NFTA_RULE_EXPRESSIONS, b"")
    for _, a, b in attrs(listed, 0, len(listed)):
        expr = nested(listed[a:b])
        exprs.append(Expr(_text(expr.get(NFTA_EXPR_NAME)), nested(expr.get(NFTA_EXPR_DATA, b""))))
    return Rule(_text(f.get(NFTA_RULE_CHAIN)), _u64(f.get(NFTA_RULE_HANDLE)), tuple(exprs),
                _comment(f.get(NFTA_RULE_USERDATA, b"")))


def _comment(userdata: bytes) -> Optional[str]:
    """The comment among a rule's userdata TLVs (type, length, value: libnftnl's udata)."""
    offset = 0
    while offset + 2 <= len(userdata):
        kind, length = userdata[offset], userdata[offset + 1]
        if kind == NFTNL_UDATA_RULE_COMMENT:
            return _text(userdata[offset + 2:offset + 2 + length])
        offset += 2 + length
    return None


def parse_elements(payload: bytes) -> list[Element]:
    """The elements of one NEWSETELEM message, read in place: a set of 100,000 is 100,000 of them."""
    found = []
    for kind, start, end in attrs(payload, NFGEN.size, len(payload)):
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS:
            continue
        while start + ATTR.size <= end:
            length = ATTR.unpack_from(payload, start)[0]
            if length < ATTR.size:
                break
            key, flags, key_end = b"", 0, None
            inner, stop = start + ATTR.size, min(start + length, end)
            while inner + ATTR.size <= stop:
                size, what = ATTR.unpack_from(payload, inner)
                if size < ATTR.size:
                    break
                what &= 0x3FFF
                if what in (NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END):
                    value = _first_value(payload, inner + ATTR.size, inner + size)
                    if what == NFTA_SET_ELEM_KEY:
                        key = value
                    else:
                        key_end = value
                elif what == NFTA_SET_ELEM_FLAGS and size == ATTR.size + 4:
                    flags = U32.unpack_from(payload, inner + ATTR.size)[0]
                inner += (size + 3) & ~3
            found.append(Element(key, flags, key_end))
            start += (length + 3) & ~3
    return found


def _first_value(data: bytes, start: int, end: int) -> bytes:
    """The NFTA_DATA_VALUE payload in an nft_data attribute's payload data[start:end]."""
    for kind, a, b in attrs(data, start, end):
        if kind == NFTA_DATA_VALUE:
            return data[a:b]
    return b""


def _request(msg_type: int, family: str, *fields: bytes, dump: bool = True) -> Callable[[int], bytes]:
    head = NFGEN.pack(NFPROTO[family], 0, 0)
    flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
    return lambda seq: message(msg_type, flags, seq, head + b"".join(fields))


def _dump_once(nl: Socket, family: str, table: str) -> Dump:
    try:
        found = list(nl.ask(lambda seq: pack_gettable(seq, family, table)))
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise
        found = []
    if not found:
        return Dump(None, [], [], [], {})
    handle = parse_table(found[0]).handle
    sets = [parse_set(p) for p in nl.dump(_request(NFT_MSG_GETSET, family, _name(NFTA_SET_TABLE, table)))]
    chains = [parse_chain(p) for p in nl.dump(_request(NFT_MSG_GETCHAIN, family, _name(NFTA_CHAIN_TABLE, table)))
              if _text(_fields(p).get(NFTA_CHAIN_TABLE)) == table]
    rules = [parse_rule(p) for p in nl.dump(_request(NFT_MSG_GETRULE, family, _name(NFTA_RULE_TABLE, table)))
             if _text(_fields(p).get(NFTA_RULE_TABLE)) == table]
    elements = {}
    for found_set in sets:
        if found_set.flags & NFT_SET_ANONYMOUS:
            request = _request(NFT_MSG_GETSETELEM, family, _name(NFTA_SET_ELEM_LIST_TABLE, table),
                               _name(NFTA_SET_ELEM_LIST_SET, found_set.name))
            elements[found_set.name] = [e for p in nl.dump(request) for e in parse_elements(p)]
    return Dump(handle, sets, chains, rules, elements)


def read_set(family: str, table: str, name: str) -> tuple[Optional[Set], list[Element]]:
    """One set and its elements; (None, []) when there is no such set. A dump taken while the kernel
    resizes a large hash set can repeat some elements and skip others: the caller checks."""
    with Socket(NETLINK_NETFILTER) as nl:
        try:
            found = [parse_set(p) for p in nl.ask(_request(NFT_MSG_GETSET, family, _name(NFTA_SET_TABLE, table),
                                                           _name(NFTA_SET_NAME, name), dump=False))]
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            return None, []
        request = _request(NFT_MSG_GETSETELEM, family, _name(NFTA_SET_ELEM_LIST_TABLE, table),
                           _name(NFTA_SET_ELEM_LIST_SET, name))
        return (found[0] if found else None), [e for p in nl.dump(request) for e in parse_elements(p)]


def _generation(nl: Socket) -> int:
    for payload in nl.ask(pack_getgen):
        return parse_generation(payload)
    raise OSError(errno.EIO, "the kernel sent no generation")


def read(family: str, table: str) -> Dump:
    """The table's objects, read while the ruleset generation stood still, as libnftables fills its
    cache: a dump any change interrupted or cut short (the table deleted meanwhile), or a generation
    that moved, is read again, up to TRIES times, before OSError(EINTR). OSError too when the kernel
    refuses a dump."""
    with Socket(NETLINK_NETFILTER) as nl:
        for _ in range(TRIES):
            before = _generation(nl)
            try:
                found = _dump_once(nl, family, table)
            except OSError as e:
                if e.errno not in (errno.EINTR, errno.ENOENT):  # ENOENT: the table went after its own read
                    raise
                continue
            if _generation(nl) == before:
                return found
    raise OSError(errno.EINTR, f"the ruleset changed during each of {TRIES} reads of table {family} {table}")
