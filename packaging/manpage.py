"""Write f2bext(1) to stdout, generated from the command's own argparse help, so the page cannot
drift from the command. Run from a checkout: python3 packaging/manpage.py > f2bext.1"""

import argparse
import os
import sys
import time

os.environ["COLUMNS"] = "72"  # argparse wraps to this; man indents sections by 7 more
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from f2bext import __version__, cli  # noqa: E402

FILES = """\
.TP
.I /etc/fail2ban/action.d/f2bext\\-nftables.py
The fail2ban action (\\fBbanaction = f2bext\\-nftables.py\\fR in jail.local).
.TP
.I /etc/fail2ban/action.d/f2bext\\-nftables.conf
The same ban as a shell action calling this command.
.TP
.I /run/f2bext/jails/
Each enforced jail's parameters, written by the action and read by \\fBverify\\fR and \\fBrepair\\fR
(\\fBF2BEXT_STATE_DIR\\fR overrides it).
.TP
.I /var/lib/f2bext/
What fleet sharing keeps across reboots: the queue of events Redis has not acknowledged, and this
server's instance id (under \\fBF2BEXT_STATE_DIR\\fR/lib when that is set).
.TP
.I /var/run/fail2ban/fail2ban.sock
fail2ban's control socket, asked for a jail's bans (\\fBF2BEXT_FAIL2BAN_SOCKET\\fR overrides it).
"""


def roff(text: str) -> str:
    """Escape text for a no-fill block: backslashes, minus signs, and lines that start like requests."""
    lines = text.replace("\\", "\\e").replace("-", "\\-").splitlines()
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def main() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in commands._choices_actions}
    date = time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))))
    out = [f'.TH F2BEXT 1 "{date}" "f2bext {__version__}" "User Commands"',
           ".SH NAME", f"f2bext \\- {roff(parser.description.rstrip('.'))}",
           ".SH SYNOPSIS", ".nf", roff(parser.format_usage().removeprefix("usage: ").strip()), ".fi",
           ".SH DESCRIPTION", ".nf", roff(parser.format_help().split("\n\n", 1)[1]), ".fi",
           ".SH COMMANDS"]
    for name, sub in commands.choices.items():
        out += [f".SS {name}", roff(helps.get(name) or ""), ".PP", ".nf", roff(sub.format_help()), ".fi"]
    out += [".SH EXIT STATUS", roff(cli.__doc__.split("Exit codes: ", 1)[1].strip()),
            ".SH FILES", FILES.rstrip(),
            ".SH SEE ALSO", ".BR fail2ban\\-client (1),", ".BR jail.conf (5),", ".BR nft (8)"]
    print("\n".join(out))


if __name__ == "__main__":
    main()
