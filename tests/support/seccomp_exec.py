"""Run a command under the seccomp filter a systemd unit would give it, without systemd.

Runs under the system interpreter (`/usr/bin/python3`, which has Debian's python3-seccomp; the
project's venv does not) and imports `seccomp` only there:

    /usr/bin/python3 tests/support/seccomp_exec.py --allow FILE [--errno EPERM]
        [--families AF_UNIX,AF_INET,AF_INET6] -- COMMAND...

FILE holds the allowed system calls, one a line (the unit's `SystemCallFilter=` expanded by
`systemd-analyze syscall-filter`). It builds what systemd's seccomp-util.c builds for those settings:

- every other system call fails with the errno (`SystemCallErrorNumber=`);
- `socket()` for a family not listed fails with EAFNOSUPPORT (`RestrictAddressFamilies=`);
- only the native ABI is in the filter (`SystemCallArchitectures=native`): libseccomp's default
  context has no other architecture, and a call through another one is killed;

then execs COMMAND, whose children inherit the filter (and no_new_privs, as `NoNewPrivileges=`).
`--check` exits 0 when the seccomp module can be imported, else 1 with the reason.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys

# Address families are small integers (AF_MAX is 46 on Linux 6.x); anything above gets EAFNOSUPPORT too.
AF_LIMIT = 64


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow", help="file with the allowed system calls, one a line")
    parser.add_argument("--errno", default="EPERM", help="errno of a filtered call (SystemCallErrorNumber=)")
    parser.add_argument(
        "--families", default="", help="comma-separated AF_* names (RestrictAddressFamilies=)"
    )
    parser.add_argument("--check", action="store_true", help="only check that python3-seccomp is there")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        import seccomp
    except ImportError as exc:
        print(f"python3-seccomp is not installed for {sys.executable}: {exc}", file=sys.stderr)
        return 1
    if args.check:
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not args.allow or not command:
        parser.error("--allow and a command are required")

    denied = getattr(errno, args.errno)
    flt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(denied))
    families = {getattr(socket, name) for name in args.families.split(",") if name}
    with open(args.allow, encoding="utf-8") as f:
        names = sorted({line.strip() for line in f if line.strip()})
    for name in names:
        if name == "socket" and families:
            continue
        try:
            flt.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):  # a call this libseccomp or this architecture does not know
            continue
    if families and "socket" in names:
        for family in range(AF_LIMIT):
            action = seccomp.ALLOW if family in families else seccomp.ERRNO(errno.EAFNOSUPPORT)
            flt.add_rule(action, "socket", seccomp.Arg(0, seccomp.EQ, family))
        flt.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.GE, AF_LIMIT))
    flt.load()
    os.execvp(command[0], command)
    return 127  # not reached: execvp raises on failure


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
