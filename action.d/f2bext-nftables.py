# f2bext: fail2ban bans in nftables sets that hold.
#
# Use in jail.local:    banaction = f2bext-nftables.py
#                  or:  action = f2bext-nftables.py[port="25,465,587", type=allports]
# Parameters: port, protocol, type (multiport|allports), blocktype (reject|drop),
# hooks (input | input,forward) or chain (INPUT|FORWARD|DOCKER-USER), kill (conntrack,sockets|none).
# All the work is in the f2bext package; this file only names the backend.

from f2bext.fail2ban import EnforcingAction


class Action(EnforcingAction):
    backend_name = "nftables"
