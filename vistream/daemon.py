"""The one place that wires the parts together, watches them, and takes them down.

`start()` reads as the list of parts in the order they come up. Each step
registers its own undo on an ExitStack, so `stop()` runs the same list
backwards: readers (intake) first, then the scheduler (finishes its batch),
the result pump (drains), metrics, MQTT (says offline), the shared memory.
Every stop step has a deadline; together they fit in systemd's 10 s.
"""

from __future__ import annotations

import errno
import logging
import queue
import signal
import ssl
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from vistream.config.loader import load_config
from vistream.config.models import CameraConfig, Config, ConfigError
from vistream.config.secrets import mqtt_password
from vistream.ops.boot import BootError
from vistream.ops.cameras import Cameras
from vistream.ops.logs import LogHub, camera
from vistream.ops.process import SPAWN, Child, StopFlag
from vistream.ops.reload import Reloader
from vistream.ops.scheduler import SchedulerRuntime, scheduler_child
from vistream.ops.shard import Shard
from vistream.ops.stats import Buckets, SchedulerStats
from vistream.ops.status import CameraStatus, EventFigures, Figures, StatusSource, Vitals, vitals
from vistream.ops.summary import Summary
from vistream.ops.supervise import Limits, Threads, Turning, Watchdog
from vistream.ops.systemd import Notifier
from vistream.ops.webconfig import WebConfigError
from vistream.outputs.alerts import Alerts
from vistream.outputs.homeassistant import DiscoveryPublisher
from vistream.outputs.mqtt import MqttPublisher
from vistream.outputs.outbox import FILENAME as OUTBOX_FILE
from vistream.outputs.outbox_runtime import OutboxRuntime
from vistream.outputs.results import LatestFrame, ResultPump
from vistream.ring.naming import instance_id, remove_leftovers, shm_shortage
from vistream.ring.shm import FrameRing, RingLayout
from vistream.scheduler.loop import SchedulerSpec
from vistream.scheduler.messages import Fatal, Ready
from vistream.sources.reader import ReaderSpec, run_reader

log = logging.getLogger(__name__)

# The newest frame, the one being written, the one in the running batch, and results on their way to
# the main process, whose frames stay held for their snapshots (docs/architecture.md, "Holds").
RING_SLOTS = 6
TICK_S = 0.2
READER_STOP_S = 2.0
SCHEDULER_STOP_S = 3.0
PUMP_DRAIN_S = 1.0
MQTT_GOODBYE_S = 1.5
STATUS_EVERY_S = 5.0

__all__ = ["BootError", "Daemon"]  # BootError lives in ops/boot.py: the start steps' parts raise it too


class Daemon:
    def __init__(
        self,
        cfg: Config,
        *,
        config_path: str | Path | None = None,
        on_tick: Callable[[StatusSource], bool] | None = None,
        shard: Shard | None = None,
    ) -> None:
        """`config_path`: the file SIGHUP reads again (without it, SIGHUP only logs). `shard`: run
        only its cameras, as `{client_id}-{K}` (docs/operations.md, "Sharding")."""
        self.shard = shard or Shard(0, 1)
        self.full_cfg = cfg  # every shard's cameras: Home Assistant discovery announces them all
        self.cfg = self.shard.view(cfg)
        self.config_path = config_path
        self.instance = instance_id(cfg.mqtt.client_id)
        self.stop_flag = StopFlag()
        self.exit_code = 0
        self.ready: Ready | None = None
        self.fatal: Fatal | None = None
        h, w = self.cfg.model.input_hw
        # Rings, readers, cameras that failed to start: one mapping, the main thread its one writer.
        self.cameras = Cameras(self.instance, RingLayout(RING_SLOTS, h, w), self._spawn_reader)
        self.scheduler = SchedulerRuntime(self._launch_scheduler, self.cameras.release_holds)
        # Threads of this process, found dead and started again, or stuck.
        self.threads = Threads(lambda: {"results": self.pump, "log-hub": self.logs}, ("results", "log-hub"))
        self._wake = SPAWN.Semaphore(0)
        self._control: queue.SimpleQueue[tuple[Any, list[str], int]] = queue.SimpleQueue()  # pump -> main
        self._on_tick = on_tick
        self._stack = ExitStack()
        self._hup = False
        self.http: Any = None  # the HTTP server, once started (vistream.ops.http.HttpServer)
        # With rules, lines or Home Assistant (maybe from a reload); one per shard.
        self.outbox = OutboxRuntime(self.cfg.state_dir / self.shard.state_file(OUTBOX_FILE), self.cfg.outbox)
        self.discovery: DiscoveryPublisher | None = None  # with mqtt.home_assistant
        self.reloader: Reloader | None = None  # once the parts a reload changes are up
        self.notifier = Notifier()
        # Stall limits and watchdog pings derived from systemd's WatchdogSec, so that a hang is
        # recovered from inside before systemd gives up on the service (docs/operations.md).
        self.limits = Limits.for_watchdog(self.notifier.watchdog_timeout)
        self.watchdog = Watchdog(self.notifier, self.limits.ping_s, STATUS_EVERY_S)
        self._summary = Summary()
        self._log_level = logging.getLogger().getEffectiveLevel()

    # -- lifecycle ---------------------------------------------------------------

    def run(self) -> int:
        """Start, supervise until told to stop, stop; returns the exit code."""
        self._install_signals()
        try:
            self.start()
            if self.ready:
                self.loop()
        except BootError as exc:
            log.error("%s", exc)
            self.exit_code = exc.exit_code
        finally:
            self.stop()
        return self.exit_code

    def start(self) -> None:
        self._init_logs()
        self._init_rings()
        self._init_outbox()
        self._init_mqtt()
        self._init_pump()
        self._init_metrics()
        self._init_scheduler()
        self._start_readers()
        self._init_reload()
        self._wait_ready()

    def stop(self) -> None:
        self.notifier.stopping()
        self._stack.close()
        self.notifier.close()

    def _install_signals(self) -> None:
        # Handlers only record; the loop acts (a handler may run in the middle of anything).
        signal.signal(signal.SIGTERM, self.stop_flag.set)
        signal.signal(signal.SIGINT, self.stop_flag.set)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_hup(self, *_: object) -> None:
        self._hup = True

    def _init_logs(self) -> None:
        self.logs = LogHub()
        self.logs.start()
        self._stack.callback(self.logs.stop)
        shard = self.shard.describe(self.cfg, self.full_cfg)
        if shard:
            log.log(shard[0], "%s", shard[1])

    def _init_rings(self) -> None:
        remove_leftovers(self.instance)
        self._stack.callback(self.cameras.retire_all)
        # tmpfs allocates on write: rings that do not fit would kill a reader with SIGBUS later.
        shortage = shm_shortage(len(self.cfg.enabled_cameras) * self.cameras.layout.total_bytes)
        if shortage:
            raise BootError(2, shortage)
        for cam in self.cfg.enabled_cameras:
            self.cameras.make_ring(cam)

    def _init_mqtt(self) -> None:
        try:
            will = self.shard.will_topic(self.cfg.mqtt.topic_prefix, self.full_cfg.mqtt.client_id)
            self.mqtt = MqttPublisher(self.cfg.mqtt, mqtt_password(self.cfg.mqtt), will)
        except ConfigError as exc:  # an unreadable password file or credential
            raise BootError(2, str(exc)) from None
        except (ssl.SSLError, OSError, ValueError) as exc:  # files that exist but are no TLS material
            raise BootError(2, f"mqtt.tls: cannot use the certificate or key files: {exc}") from None
        # Every camera is offline until its frames flow: the first connection says so, replacing
        # the `online` a crashed earlier run may have left retained (its Last Will covers only
        # {prefix}/status), long before the model is loaded and the first tick runs.
        for cam in self.cfg.enabled_cameras:
            self.mqtt.camera_status(cam.name, False)
        # Listeners first: they must hear of the very first connection.
        if self.cfg.mqtt.home_assistant:
            self._init_discovery()
        self.outbox.deliver(self.mqtt, [self.discovery.announce] if self.discovery is not None else [])
        self.mqtt.start()
        self._stack.callback(self.mqtt.stop, MQTT_GOODBYE_S)
        # Stops before MQTT (a late outbox's delivery too): in flight gets its PUBACK, the rest stays.
        self._stack.callback(self.outbox.stop_delivery)

    def _init_outbox(self) -> None:
        """The durable outbox of events and counters, when the config has anything to deliver; its
        close keeps its place in the stop order (after the result pump) also when a reload opens it."""
        self.outbox.start(self._stack, self.cfg)

    def _init_discovery(self) -> None:
        assert self.outbox.outbox is not None  # home_assistant: true always opens it
        self.discovery = DiscoveryPublisher(self.full_cfg, self.outbox.outbox, self.shard)

    def _init_pump(self) -> None:
        self.alerts = Alerts(self.cfg, self.outbox.outbox, self.ring)
        results, release = self.scheduler.results, self.cameras.release
        self.pump = ResultPump(self.mqtt, results, self._on_control, alerts=self.alerts, release=release)
        self.pump.start()
        self._stack.callback(self.pump.stop, PUMP_DRAIN_S)

    def _init_metrics(self) -> None:
        if not self.cfg.metrics.enabled:
            return
        from vistream.ops.metrics import serve_metrics

        host, port = self.cfg.metrics.host, self.shard.metrics_port(self.cfg.metrics.port)
        if port > 65535:
            raise BootError(
                2, f"metrics.port: {self.cfg.metrics.port} + shard {self.shard.index} is above 65535"
            )
        try:
            server = serve_metrics(self, host, port)
        except WebConfigError as exc:
            raise BootError(2, f"metrics.web_config_file: {exc}") from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BootError(2, f"metrics.port: {host}:{port} is in use") from None
            reason = exc.strerror or exc
            raise BootError(2, f"metrics.host: cannot listen on {host}:{port}: {reason}") from None
        self.metrics_port = server.port
        log.info("HTTP on %s://%s:%d/ (status page, /metrics, /healthz, /api)", server.scheme, host,
                 self.metrics_port)  # fmt: skip
        self._stack.callback(server.stop)
        self.http = server  # SIGHUP reads its web config again

    def _on_control(self, msg: Any) -> None:
        """The result thread read a scheduler's Ready or Fatal: it binds what is its own (the event
        engine, the pump's class names) and posts the rest to the main thread, the one writer of
        `ready` and `fatal` (`_drain_control`)."""
        problems: list[str] = []
        read = 0
        if isinstance(msg, Ready):
            problems = self.alerts.bind(msg.names)
            if not problems:
                self.pump.names = msg.names
            # What the pump has handled so far: done with the old queues, nothing read from the new.
            _, published, _ = self.pump.snapshot()
            read = sum(published.values()) + self.mqtt.dropped.get("detections", 0)
        self._control.put((msg, problems, read))

    def _drain_control(self) -> None:
        while True:
            try:
                msg, problems, read = self._control.get_nowait()
            except queue.Empty:
                return
            if isinstance(msg, Fatal):
                self.fatal = msg
            elif problems:  # rule labels the loaded model does not have: the config must change
                self.fatal = Fatal(2, "\n".join(problems))
            elif isinstance(msg, Ready):
                self.ready = msg
                self.scheduler.count_abandoned(read)

    def _init_scheduler(self) -> None:
        self._stack.callback(self.scheduler.stop, SCHEDULER_STOP_S)
        self.scheduler.start()

    def _launch_scheduler(self, base: SchedulerStats) -> tuple[Child, SchedulerSpec]:
        rings = self.cameras.ring_names()
        return scheduler_child(self.cfg, rings, self._wake, base, self.logs, self._log_level)

    def _start_readers(self) -> None:
        self._stack.callback(self.cameras.stop_all, READER_STOP_S)
        for cam in self.cfg.enabled_cameras:
            self.cameras.start(cam)

    def _spawn_reader(self, cam: CameraConfig, ring_name: str) -> Child:
        return Child(f"reader {cam.name}", run_reader, (ReaderSpec(cam, ring_name, self._wake),), self.logs,
                     self._log_level, log_context=camera(cam.name))  # fmt: skip

    def _init_reload(self) -> None:
        """What applies a reload: each change by the part that owns it (vistream.ops.reload)."""
        self.reloader = Reloader(
            self.shard, self.cameras, self.scheduler, self.mqtt, self.stop_flag, rules=self.alerts,
            outbox=self.outbox, link=self.mqtt, discovery=self.discovery, reader_stop_s=READER_STOP_S,
            scheduler_stop_s=SCHEDULER_STOP_S,
        )  # fmt: skip

    def _wait_ready(self) -> None:
        while not self.stop_flag:
            self._drain_control()
            if self.ready or self.fatal:
                break
            sched = self.scheduler
            if sched.current and not sched.alive:
                self.stop_flag.sleep(0.5)  # its last words may still be in the queue
                self._drain_control()
                why = f"the scheduler exited with code {sched.exitcode} while loading the model"
                self.fatal = self.fatal or (None if self.ready else Fatal(3, why))
                break
            self.stop_flag.sleep(TICK_S)
        if self.fatal:
            log.error("%s", self.fatal.message)
            self.exit_code = self.fatal.exit_code
        elif self.ready:
            r = self.ready
            model = f"model on {r.device} ({r.backend}, {r.precision})"
            status = f"{len(self.cameras.running)} camera(s), {model}"
            log.info("ready: %s, warm in %.1fs", status, self.ready.load_s)
            timeout = self.notifier.watchdog_timeout
            if self.limits.ping_s and timeout:
                log.info("%s", self.limits.describe(timeout))
            self.notifier.ready(status)

    # -- reload (SIGHUP) ----------------------------------------------------------

    def reload(self) -> None:
        """Read the config file again; apply what changed, one camera at a time, or keep the old one.

        Unchanged cameras keep their reader, ring and sequence numbers; model or batching changes
        restart the scheduler only; zones, lines and rules apply without restarting anything.
        """
        if self.http is not None:
            self.http.reload()  # metrics.web_config_file: certificates and users
        if self.config_path is None:
            log.warning("SIGHUP: no config file to read again (the daemon was given a config object)")
            return
        self.notifier.reloading()
        try:
            full = load_config(self.config_path)
            assert self.reloader is not None  # ready: every part is up
            change, self.cfg, self.full_cfg = self.reloader.plan(full, self.cfg, self.full_cfg)
            self.reloader.apply(change, self.cfg, self.full_cfg)  # a new scheduler is made from self.cfg
        except ConfigError as exc:
            for line in exc.problems:
                log.error("reload: %s", line)
            log.error("reload: %s is invalid; still running the previous config, unchanged", self.config_path)
        finally:
            self.notifier.ready()

    # -- supervision ----------------------------------------------------------------

    def loop(self) -> None:
        while not self.stop_flag:
            self.tick()
            self.stop_flag.sleep(TICK_S)
        log.info("stopping")

    def tick(self) -> None:
        now = time.monotonic()
        self._drain_control()
        if self._hup:
            self._hup = False
            self.reload()
        self.outbox.retry(now, self.cfg, self.alerts, self.mqtt)
        if self.reloader is not None:
            self.reloader.retry_failed(now)
        if self.discovery is not None:
            self.discovery.flush()  # what an unwritable outbox refused at the last update
        self.scheduler.drain()
        self._supervise_scheduler(now)
        if self.fatal:  # the model cannot be loaded (again): reloading forever would not help
            log.error("%s", self.fatal.message)
            self.exit_code = self.fatal.exit_code
            self.stop_flag.set()
            return
        stuck = self.threads.supervise(now, self.limits.stall_s)
        if stuck:  # a thread cannot be killed: stop with exit 1 (the watchdog is starved by then too)
            log.error("%s", stuck)
            self.exit_code = 1
            self.stop_flag.set()
        for name, online in self.cameras.supervise(now):
            self.mqtt.camera_status(name, online)
        self.watchdog.tick(now, self.flowing, self.status_line)
        if self.ready:
            sampled = sum(int(rt.ring.header["head"]) for rt in self.cameras.running)
            self._summary.tick(now, sampled, self.scheduler_stats())
        if self._on_tick and self._on_tick(self):  # the demo's view: True when its time is up
            self.stop_flag.set()

    def flowing(self, now: float) -> bool:
        """Do results flow end to end: the scheduler looping, the result pump and the log hub turning?

        Idle is fine (no camera streams: nothing is due, and every stage still turns); a stage
        that is dead or stuck is not, whichever it is.
        """
        return self.vitals(now).flowing

    def status_line(self) -> str:
        """systemd's STATUS=, every STATUS_EVERY_S."""
        running = self.cameras.running
        inferred = sum(c.inferred for c in self.scheduler_stats().cameras.values())
        return f"{sum(rt.online for rt in running)}/{len(running)} cameras online, {inferred} frames inferred"

    def _supervise_scheduler(self, now: float) -> None:
        code = self.scheduler.supervise(now, self.limits)
        if code is not None:  # it cannot load the model: final
            if not self.fatal:
                self.stop_flag.sleep(0.5)  # its last words (a Fatal with the key) may still be queued
                self._drain_control()
            self.fatal = self.fatal or Fatal(code, f"the scheduler exited with code {code} loading the model")

    # -- StatusSource: plain data for the HTTP app, the metrics collector, the demo --------------------

    def vitals(self, now: float) -> Vitals:
        threads: dict[str, Turning] = {"result pump": self.pump, "log hub": self.logs}
        sched = self.scheduler
        return vitals(
            now, self.limits.window_s, stopping=bool(self.stop_flag), ready=self.ready is not None,
            running=sched.alive, liveness=sched.liveness, threads=threads,
            backend_down=self.scheduler_stats().backend_down, outbox_problem=self.outbox.problem,
        )  # fmt: skip

    def figures(self) -> Figures:
        unwritten, dropped = self.alerts.unwritten()
        return Figures(
            mqtt_connected=bool(self.mqtt.connected), mqtt_dropped=dict(self.mqtt.dropped_by_reason),
            scheduler_restarts=self.scheduler.restarts, results_abandoned=self.scheduler.results_abandoned,
            scheduler_spawn_failures=self.scheduler.spawn_failures,
            thread_restarts=dict(self.threads.restarts), outbox=self.outbox.figures(), unwritten=unwritten,
            unwritten_dropped=dropped, event_errors=self.pump.alert_errors, snapshots=self.alerts.snapshots,
            snapshots_lost=self.alerts.snapshots_lost,
        )  # fmt: skip

    def scheduler_stats(self) -> SchedulerStats:
        """Totals over every scheduler this daemon ran."""
        return self.scheduler.totals()

    def pipeline(self) -> tuple[Buckets, dict[str, int], dict[str, Counter[str]]]:
        return self.pump.snapshot()

    def events(self) -> EventFigures:
        return self.alerts.figures()

    def latest(self, name: str) -> LatestFrame | None:
        return self.pump.latest(name)

    def ring(self, name: str) -> AbstractContextManager[FrameRing | None]:
        """The camera's ring under a lease, for one copy, from any thread (vistream.ring.lifetime)."""
        return self.cameras.ring(name)

    def camera_config(self, name: str) -> CameraConfig | None:
        return self.cameras.config(name)

    def camera_status(self) -> list[CameraStatus]:
        return self.cameras.status()
