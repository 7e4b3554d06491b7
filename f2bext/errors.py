"""The two kinds of failure f2bext reports."""


class InputError(ValueError):
    """The caller's input is wrong; shown as one line, exit 2 on the command line."""


class KernelError(RuntimeError):
    """The kernel (or a firewall tool) refused a change; carries what it said."""

    def __init__(self, what: str, said: str = "") -> None:
        self.what = what
        self.said = said.strip()
        super().__init__(f"{what}: {self.said}" if self.said else what)
