"""vistream: multi-camera video analytics daemon.

The frame's path through the package: sources (decode) -> ring (shared
memory) -> scheduler (batching, staleness) -> detector (model backends) ->
events (tracking, zones, rules) -> outputs (MQTT, outbox, snapshots) with ops
(supervision, metrics) and config around them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vistream")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
