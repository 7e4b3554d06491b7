"""f2bext: fail2ban actions whose bans hold."""

__version__ = "0.1.0"
