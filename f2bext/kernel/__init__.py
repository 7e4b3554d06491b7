"""The kernel's protocols, spoken by hand: each module packs and parses one subsystem's messages
(pure functions) and keeps the one socket that carries them.

  netlink   the transport: messages, attributes, one request at a time on a socket
"""
