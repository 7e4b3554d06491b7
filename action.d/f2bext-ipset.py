# f2bext: fail2ban bans in ipsets, matched by iptables rules kept at the head of INPUT (and FORWARD).
#
# Use in jail.local:    banaction = f2bext-ipset.py
#                  or:  action = f2bext-ipset.py[port="25,465,587", type=allports]
# Parameters: port, protocol, type (multiport|allports), blocktype (reject|drop),
# hooks (input | input,forward) or chain (INPUT|FORWARD|DOCKER-USER), kill (conntrack,sockets|none).
# All the work is in the f2bext package; this file only names the backend.

from f2bext.fail2ban import EnforcingAction


class Action(EnforcingAction):
    backend_name = "ipset"
