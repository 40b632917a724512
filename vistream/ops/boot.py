"""The error a start step raises when the daemon cannot boot."""

from __future__ import annotations


class BootError(Exception):
    """The daemon cannot boot: one line naming the key, and the exit code (2 config, 3 model).

    Raised by a start step; `Daemon.run()` logs the line (no traceback) and exits with the code,
    which the unit's RestartPreventExitStatus keeps systemd from restarting.
    """

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
