"""nf_tables transactions over netlink: tables, sets, base chains, rules of a few expressions, and set
elements, packed as libnftables packs them (the same attributes, so that nft lists what we made as if
it had made it), then sent in one batch on a socket the caller keeps, and every answer read. One
batch is one transaction: the kernel takes it whole or not at all."""

from __future__ import annotations

import socket
import struct
from typing import Optional, Sequence

from .netlink import HEADER, NFGEN, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, attr, nest
from .nftelem import make_answer_room, make_room, read_answer
from .nftgen import NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFPROTO

NLM_F_APPEND = 0x800
NEWTABLE, DELTABLE, NEWCHAIN, DELCHAIN, NEWRULE, DELRULE = 0, 2, 3, 5, 6, 8
NEWSET, DELSET, NEWSETELEM, DELSETELEM = 9, 11, 12, 14
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS = 1, 2
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE = 1, 3, 4, 5, 7
NFTA_HOOK_HOOKNUM, NFTA_HOOK_PRIORITY = 1, 2
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA = 1, 2, 4, 7
NFTA_LIST_ELEM, NFTA_EXPR_NAME, NFTA_EXPR_DATA = 1, 1, 2
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN = 1, 2, 3, 4, 5
NFTA_SET_DESC, NFTA_SET_ID, NFTA_SET_DESC_SIZE = 9, 10, 1
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET_ID = 1, 2, 3, 4
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_FLAGS = 1, 3
NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE = 1, 2, 1
NFT_SET_ANONYMOUS, NFT_SET_CONSTANT, NFT_SET_INTERVAL = 0x1, 0x2, 0x4
NFT_SET_ELEM_INTERVAL_END = 0x1
NFT_REG_VERDICT, NFT_REG_1 = 0, 1
NFTNL_UDATA_RULE_COMMENT = 0
# What the expressions of our rules name; kernel/nftdump.py and backends/nft/read.py read them back.
META_NFPROTO, META_L4PROTO = 15, 16
PAYLOAD_NETWORK, PAYLOAD_TRANSPORT = 1, 2
CT_PROTO_DST, CT_ORIGINAL = 12, 0
CMP_EQ, CMP_LTE, CMP_GTE = 0, 3, 5
REJECT_ICMPX, ICMPX_ADMIN_PROHIBITED = 2, 3
NF_DROP = 0
RECV = 65536
SEQ = 0x20000000  # sequence numbers of our batches, apart from nftelem's on the same socket
_BATCH = NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(NFNL_SUBSYS_NFTABLES))


def _u32(value: int) -> bytes:
    return struct.pack(">L", value & 0xFFFFFFFF)


def name_attr(kind: int, name: str) -> bytes:
    return attr(kind, name.encode() + b"\0")


def _data(kind: int, value: bytes) -> bytes:
    return nest(kind, attr(NFTA_DATA_VALUE, value))


class Message:
    """One message of a batch: its type within nf_tables, its flags, its payload after nfgenmsg."""

    def __init__(self, msg_type: int, flags: int, family: str, body: bytes) -> None:
        self.msg_type, self.flags, self.body = (NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, \
            NFGEN.pack(NFPROTO[family], 0, 0) + body


def table(op: int, family: str, name: str, flags: Optional[int] = None) -> Message:
    body = name_attr(NFTA_TABLE_NAME, name) + (attr(NFTA_TABLE_FLAGS, _u32(flags)) if flags is not None else b"")
    return Message(op, NLM_F_CREATE if op == NEWTABLE else 0, family, body)


def add_set(family: str, table_name: str, name: str, key_type: int, key_len: int, flags: int, set_id: int,
            size: Optional[int] = None) -> Message:
    body = (name_attr(NFTA_SET_TABLE, table_name) + name_attr(NFTA_SET_NAME, name) + attr(NFTA_SET_FLAGS, _u32(flags))
            + attr(NFTA_SET_KEY_TYPE, _u32(key_type)) + attr(NFTA_SET_KEY_LEN, _u32(key_len))
            + attr(NFTA_SET_ID, _u32(set_id)))
    if size is not None:
        body += nest(NFTA_SET_DESC, attr(NFTA_SET_DESC_SIZE, _u32(size)))
    return Message(NEWSET, NLM_F_CREATE, family, body)


def delete(op: int, family: str, table_name: str, name: str) -> Message:
    """DELCHAIN or DELSET of one object by name; DELRULE of a chain's every rule (a flush)."""
    kinds = {DELCHAIN: (NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME), DELSET: (NFTA_SET_TABLE, NFTA_SET_NAME),
             DELRULE: (NFTA_RULE_TABLE, NFTA_RULE_CHAIN)}[op]
    return Message(op, 0, family, name_attr(kinds[0], table_name) + name_attr(kinds[1], name))


def base_chain(family: str, table_name: str, name: str, hook: int, priority: int, policy: int,
               chain_type: str = "filter") -> Message:
    body = (name_attr(NFTA_CHAIN_TABLE, table_name) + name_attr(NFTA_CHAIN_NAME, name)
            + nest(NFTA_CHAIN_HOOK, attr(NFTA_HOOK_HOOKNUM, _u32(hook)), attr(NFTA_HOOK_PRIORITY, _u32(priority)))
            + attr(NFTA_CHAIN_POLICY, _u32(policy)) + name_attr(NFTA_CHAIN_TYPE, chain_type))
    return Message(NEWCHAIN, NLM_F_CREATE, family, body)


def rule(family: str, table_name: str, chain: str, exprs: Sequence[bytes], comment: Optional[str] = None) -> Message:
    body = (name_attr(NFTA_RULE_TABLE, table_name) + name_attr(NFTA_RULE_CHAIN, chain)
            + nest(NFTA_RULE_EXPRESSIONS, *exprs))
    if comment is not None:
        text = comment.encode() + b"\0"
        body += attr(NFTA_RULE_USERDATA, bytes([NFTNL_UDATA_RULE_COMMENT, len(text)]) + text)
    return Message(NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, body)


def elements(op: int, family: str, table_name: str, set_name: str, keys: Sequence[tuple[bytes, int]],
             set_id: Optional[int] = None, packed: bytes = b"") -> Message:
    """NEWSETELEM or DELSETELEM of (key, flags) pairs, or of elements `packed` already (nftelem's
    pack_elements); DELSETELEM of none flushes the set."""
    body = name_attr(NFTA_SET_ELEM_LIST_TABLE, table_name) + name_attr(NFTA_SET_ELEM_LIST_SET, set_name)
    if set_id is not None:
        body += attr(NFTA_SET_ELEM_LIST_SET_ID, _u32(set_id))
    if keys or packed:
        body += nest(NFTA_SET_ELEM_LIST_ELEMENTS, packed, *(_element(key, flags) for key, flags in keys))
    return Message(op, NLM_F_CREATE if op == NEWSETELEM else 0, family, body)


def _element(key: bytes, flags: int) -> bytes:
    return nest(NFTA_LIST_ELEM, _data(NFTA_SET_ELEM_KEY, key), attr(NFTA_SET_ELEM_FLAGS, _u32(flags)) if flags else b"")


# ---- expressions -------------------------------------------------------------------------------

def _expr(name: str, *attrs: bytes) -> bytes:
    return nest(NFTA_LIST_ELEM, name_attr(NFTA_EXPR_NAME, name), nest(NFTA_EXPR_DATA, *attrs))


def meta_load(key: int, dreg: int = NFT_REG_1) -> bytes:
    return _expr("meta", attr(2, _u32(key)), attr(1, _u32(dreg)))  # NFTA_META_KEY, NFTA_META_DREG


def payload_load(base: int, offset: int, length: int, dreg: int = NFT_REG_1) -> bytes:
    return _expr("payload", attr(1, _u32(dreg)), attr(2, _u32(base)), attr(3, _u32(offset)), attr(4, _u32(length)))


def ct_load(key: int, direction: int, dreg: int = NFT_REG_1) -> bytes:
    return _expr("ct", attr(1, _u32(dreg)), attr(2, _u32(key)), attr(3, bytes([direction])))


def cmp(op: int, value: bytes, sreg: int = NFT_REG_1) -> bytes:
    return _expr("cmp", attr(1, _u32(sreg)), attr(2, _u32(op)), _data(3, value))


def range_eq(low: bytes, high: bytes, sreg: int = NFT_REG_1) -> bytes:
    """Whether the register is within [low, high]: as libnftables 1.1 says a range (1.0 made two cmps)."""
    return _expr("range", attr(1, _u32(sreg)), attr(2, _u32(0)), _data(3, low), _data(4, high))  # NFT_RANGE_EQ


def lookup(set_name: str, set_id: Optional[int], sreg: int = NFT_REG_1) -> bytes:
    found = [name_attr(1, set_name), attr(2, _u32(sreg))] + ([attr(4, _u32(set_id))] if set_id is not None else [])
    return _expr("lookup", *found, attr(5, _u32(0)))  # NFTA_LOOKUP_FLAGS: not inverted


def counter() -> bytes:
    return _expr("counter", attr(1, bytes(8)), attr(2, bytes(8)))


def reject(reject_type: int, code: int) -> bytes:
    return _expr("reject", attr(1, _u32(reject_type)), attr(2, bytes([code])))


def verdict(code: int) -> bytes:
    """An immediate verdict (NF_DROP 0, NF_ACCEPT 1)."""
    return _expr("immediate", attr(1, _u32(NFT_REG_VERDICT)),
                 nest(2, nest(NFTA_DATA_VERDICT, attr(NFTA_VERDICT_CODE, _u32(code)))))


# ---- the transaction ---------------------------------------------------------------------------

def pack_batch(seq: int, messages: Sequence[Message]) -> bytes:
    """Begin, the messages as seq + 1 onwards (each acknowledged), end."""
    parts = [HEADER.pack(HEADER.size + len(_BATCH), NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, 0), _BATCH]
    for i, msg in enumerate(messages, 1):
        parts += [HEADER.pack(HEADER.size + len(msg.body), msg.msg_type, NLM_F_REQUEST | NLM_F_ACK | msg.flags,
                              seq + i, 0), msg.body]
    end = seq + len(messages) + 1
    parts += [HEADER.pack(HEADER.size + len(_BATCH), NFNL_MSG_BATCH_END, NLM_F_REQUEST, end, 0), _BATCH]
    return b"".join(parts)


class Batches:
    """Sends transactions on one socket and reads each answer to its end (the caller serialises)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._seq = SEQ
        self._buf = bytearray(RECV)

    def send(self, messages: Sequence[Message]) -> None:
        """One transaction; OSError with the kernel's words when it refuses it (then none of it is made)."""
        if not messages:
            return
        self._seq = SEQ + (self._seq + len(messages) + 2 - SEQ) % (1 << 24)
        batch = pack_batch(self._seq, messages)
        make_room(self.sock, len(batch))
        make_answer_room(self.sock, len(messages))
        self.sock.send(batch)
        read_answer(self.sock, self._seq, self._buf, len(messages))

