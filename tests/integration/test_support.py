"""The test infrastructure itself: the looping RTSP server, its fault injection, the MQTT broker."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import paho.mqtt.publish as publish
import pytest
from support.mosquitto import Subscriber
from support.procs import port_open

pytestmark = pytest.mark.integration

# ffmpeg's socket timeout (µs): a read that hangs fails after 5 s instead of at pytest's timeout.
TIMEOUT_US = "5000000"


def open_rtsp(url: str, transport: str = "tcp") -> av.container.InputContainer:
    return av.open(url, options={"rtsp_transport": transport, "timeout": TIMEOUT_US})


def frames(container: av.container.InputContainer) -> Iterator[tuple[float, av.VideoFrame]]:
    """Decoded frames with their pts in seconds, checking that the stream starts at a keyframe."""
    stream = container.streams.video[0]
    for index, packet in enumerate(container.demux(stream)):
        assert index or packet.is_keyframe, "the stream does not start at a keyframe"
        for frame in packet.decode():
            if frame.pts is None and index == 0:
                continue  # ffmpeg's RTSP demuxer gives the first packet no pts; only the first
            assert frame.pts is not None, f"packet {index} gave a frame without pts"
            yield float(frame.pts * stream.time_base), frame


def read_until_closed(container: av.container.InputContainer) -> None:
    try:
        for _ in container.demux():
            pass
    except av.FFmpegError:
        pass


@pytest.mark.serial
def test_rtsp_clip_loops_as_an_endless_live_stream(rtsp_server):
    """A camera clip never ends: 15 s of a 13.6 s clip arrive as one continuous stream.

    1. Open crowd1 over TCP; the stream starts at a keyframe.
    2. Read past the clip's end: pts strictly increase, no step exceeds 0.5 s, and more frames
       arrive than the clip holds (409), so the server wrapped around instead of ending.
    """
    with open_rtsp(rtsp_server.url("crowd1")) as container:
        stamps, sizes = [], set()
        for pts, frame in frames(container):
            stamps.append(pts)
            sizes.add((frame.width, frame.height))
            if pts - stamps[0] > 15:
                break
    assert sizes == {(640, 480)}
    steps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(steps) > 0, "pts went backwards or repeated"
    assert max(steps) <= 0.5, f"a {max(steps):.2f} s gap in the stream"
    assert len(stamps) > 409


def test_rtsp_udp_transport(rtsp_server):
    """Clients that ask for RTP over UDP get frames too, at 1080p (fragmented RTP packets)."""
    with open_rtsp(rtsp_server.url("street2"), "udp") as container:
        got = [frame for _, (_, frame) in zip(range(10), frames(container), strict=False)]
    assert len(got) == 10
    assert (got[-1].width, got[-1].height) == (1920, 1080)


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_mount_stop_and_start(make_rtsp_server, samples_dir: Path, transport: str):
    """A camera that goes away and comes back.

    1. A client watches the mount (RTP interleaved in the RTSP connection, or over UDP).
    2. stop_mount: the client's stream ends at once (not at a timeout); a new client is refused.
    3. start_mount: a new client gets frames again.
    """
    server = make_rtsp_server({"cam": samples_dir / "crowd-480p.mp4"})
    with open_rtsp(server.url("cam"), transport) as container:
        next(frames(container))
        server.stop_mount("cam")
        stopped = time.monotonic()
        read_until_closed(container)
        assert time.monotonic() - stopped < 4, "the stream did not end when its mount stopped"
    with pytest.raises(av.FFmpegError):
        open_rtsp(server.url("cam"))
    server.start_mount("cam")
    with open_rtsp(server.url("cam")) as container:
        next(frames(container))


def test_rtsp_mount_freeze_and_thaw(make_rtsp_server, samples_dir: Path):
    """A camera that hangs for 1.5 s with its connection open, then sends again.

    1. freeze_mount: no frame arrives, the connection stays up.
    2. thaw_mount (1.5 s later): frames resume on the same connection, their pts jumping over the
       silence as a live camera's do.
    """
    server = make_rtsp_server({"cam": samples_dir / "crowd-480p.mp4"})
    with open_rtsp(server.url("cam")) as container:
        stream = frames(container)
        last, _ = next(stream)
        server.freeze_mount("cam")
        thaw = threading.Timer(1.5, server.thaw_mount, ["cam"])
        thaw.start()
        try:
            # A few frames were in flight when the camera froze.
            for _, (pts, _frame) in zip(range(30), stream, strict=False):
                if pts - last > 1:
                    break
                last = pts
            else:
                pytest.fail("frames kept coming while the mount was frozen")
            assert pts - last < 3
            next(stream)
        finally:
            thaw.join()


def test_mosquitto_round_trip(mosquitto):
    """The session broker carries messages to a Subscriber, with the retain flag as MQTT defines it.

    1. A retained message reaches a live subscriber with retain=False.
    2. A subscriber that arrives later gets the retained copy, retain=True.
    3. An empty retained message clears it, so later tests on the shared broker do not see it.
    """
    host, port, topic = mosquitto.host, mosquitto.port, "support/retained"
    with Subscriber(host, port, topic) as live:
        publish.single(topic, b"hello", hostname=host, port=port, retain=True)
        assert live.wait_for(lambda m: m.payload == b"hello").retain is False
    try:
        with Subscriber(host, port, topic) as late:
            assert late.wait_for(lambda m: m.payload == b"hello").retain is True
    finally:
        publish.single(topic, b"", hostname=host, port=port, retain=True)


def test_mosquitto_restart_on_the_same_port(make_mosquitto):
    """A broker outage as later tests stage it.

    1. stop(): the port refuses connections; the Subscriber notices.
    2. start(): the broker is back on the same port; the Subscriber resubscribes by itself and
       receives what is published next.
    """
    broker = make_mosquitto()
    port = broker.port
    with Subscriber(broker.host, broker.port, "outage/#") as sub:
        broker.stop()
        assert not port_open(broker.host, port)
        sub.wait_disconnected()
        broker.start()
        assert broker.port == port
        sub.wait_subscribed(timeout=10)
        publish.single("outage/after", b"1", hostname=broker.host, port=port)
        sub.wait_for(lambda m: m.topic == "outage/after")


def test_mosquitto_with_password(make_mosquitto):
    """With users configured, the right password subscribes and a wrong one is refused."""
    broker = make_mosquitto(users={"vistream": "s3cret"})
    with Subscriber(broker.host, broker.port, "#", username="vistream", password="s3cret"):
        pass
    with (
        pytest.raises(ConnectionRefusedError),
        Subscriber(broker.host, broker.port, "#", username="vistream", password="wrong"),
    ):
        pass
