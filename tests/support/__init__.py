"""Real resources for tests: an RTSP server that loops sample clips, a Mosquitto broker, processes."""
