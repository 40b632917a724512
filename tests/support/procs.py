"""Small helpers for the real processes and ports that integration tests start (in the package since
`vistream bench` needs them too)."""

from vistream.bench.procs import free_port, port_open, stop_process, wait_for_port

__all__ = ["free_port", "port_open", "stop_process", "wait_for_port"]
