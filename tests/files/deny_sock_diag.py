"""Run a program whose kernel refuses it sock_diag netlink sockets (EACCES), as a container's seccomp
profile may: socket(AF_NETLINK, *, NETLINK_SOCK_DIAG) fails, every other socket works.

    python3 deny_sock_diag.py PROGRAM [ARG...]
"""

import ctypes
import os
import platform
import struct
import sys

AUDIT_ARCH_X86_64, SYS_SOCKET = 0xC000003E, 41
AF_NETLINK, NETLINK_SOCK_DIAG, EACCES = 16, 4, 13
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
LD_ABS, JEQ, RET = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
# struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 * i (low half first on x86_64)
PROGRAM = [
    (LD_ABS, 0, 0, 4), (JEQ, 0, 6, AUDIT_ARCH_X86_64),
    (LD_ABS, 0, 0, 0), (JEQ, 0, 4, SYS_SOCKET),
    (LD_ABS, 0, 0, 16), (JEQ, 0, 2, AF_NETLINK),
    (LD_ABS, 0, 0, 32), (JEQ, 1, 0, NETLINK_SOCK_DIAG),
    (RET, 0, 0, SECCOMP_RET_ALLOW),
    (RET, 0, 0, SECCOMP_RET_ERRNO | EACCES),
]


def deny_sock_diag() -> None:
    if platform.machine() != "x86_64":
        sys.exit(f"deny_sock_diag: written for x86_64, not {platform.machine()}")
    code = b"".join(struct.pack("=HBBI", *insn) for insn in PROGRAM)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("=HxxxxxxQ", len(PROGRAM), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or \
            libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) != 0:
        sys.exit(f"deny_sock_diag: {os.strerror(ctypes.get_errno())}")


deny_sock_diag()
os.execvp(sys.argv[1], sys.argv[1:])
