# bench-noop: a fail2ban action that does nothing. The benchmark's baseline: fail2ban-server's own
# time and memory to restore N bans when the action costs nothing. Copied into the benchmark's
# throwaway configuration directory only; never installed.

from fail2ban.server.action import ActionBase


class Action(ActionBase):
    def __init__(self, jail, name, **params):  # the banaction macro passes port, protocol, chain
        super().__init__(jail, name)

    def start(self):
        pass

    def stop(self):
        pass

    def ban(self, aInfo):
        pass

    def unban(self, aInfo):
        pass
