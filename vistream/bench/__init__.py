"""`vistream bench`: vistream side by side with the model's own limit and Ultralytics' predictor on
the same RTSP streams, and the harness it (and the benchmarks and integration tests) runs on: the RTSP
test server looping clips as live cameras, a Mosquitto broker, the daemon as a subprocess, and the
measuring of it (/metrics deltas, MQTT latency, CPU and RSS per process)."""
