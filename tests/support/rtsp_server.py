"""The RTSP test server that loops sample clips as live cameras: vistream/bench/rtsp_server.py (in the
package since `vistream bench` needs it too), where its protocol is described."""

from vistream.bench.rtsp_server import HOST, SCRIPT, SYSTEM_PYTHON, RtspServer, missing_dependency

__all__ = ["HOST", "SCRIPT", "SYSTEM_PYTHON", "RtspServer", "missing_dependency"]
