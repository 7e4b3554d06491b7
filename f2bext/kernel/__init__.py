"""The kernel's protocols, spoken by hand: each module packs and parses one subsystem's messages
(pure functions) and keeps the one socket that carries them. Nothing here knows of jails or bans.

  netlink     the transport: messages and attributes; one request at a time on a socket, dumps asked
              again when a change interrupts them, refusals with the kernel's extended ack text
  ctnetlink   conntrack: dumps filtered in the kernel, an entry's tuple and handle, deletes
  sockdiag    socket diagnostics: inet_diag dumps filtered by bytecode, socket destroy
  ipset       ipset: one element added or deleted, every set's header
  nftgen      the nf_tables ruleset generation, which every nf_tables transaction moves
  nfevents    nf_tables' change notifications (what `nft monitor` reads): who changed the ruleset
  rtnl        routing: the host's addresses, routes and nexthop objects
  xtables     iptables-legacy's filter table, read through getsockopt and fingerprinted
"""
