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
import sqlite3
import ssl
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

from vistream.config.loader import load_config
from vistream.config.models import CameraConfig, Config, ConfigError
from vistream.config.secrets import mqtt_password
from vistream.ops.cameras import CameraRuntime, Cameras
from vistream.ops.logs import LogHub, camera
from vistream.ops.process import SPAWN, Child, StopFlag
from vistream.ops.reload import diff as reload_diff
from vistream.ops.scheduler import SchedulerRuntime
from vistream.ops.shard import Shard
from vistream.ops.stats import SchedulerStats
from vistream.ops.status import CameraStatus, StatusSource
from vistream.ops.summary import Summary
from vistream.ops.supervise import Limits, Threads
from vistream.ops.systemd import Notifier
from vistream.ops.webconfig import WebConfigError
from vistream.outputs.alerts import Alerts
from vistream.outputs.delivery import Delivery
from vistream.outputs.homeassistant import DiscoveryPublisher
from vistream.outputs.mqtt import MqttPublisher
from vistream.outputs.outbox import FILENAME as OUTBOX_FILE
from vistream.outputs.outbox import Outbox
from vistream.outputs.results import ResultPump
from vistream.ring.naming import instance_id, remove_leftovers, shm_shortage
from vistream.ring.shm import FrameRing, RingLayout
from vistream.scheduler.loop import SchedulerSpec, run_scheduler
from vistream.scheduler.messages import AddCamera, Fatal, Ready, RemoveCamera
from vistream.sources.reader import ReaderSpec, run_reader

log = logging.getLogger(__name__)

# The newest frame, the one being written, the one in the running batch, and results on their way to
# the main process, whose frames stay held for their snapshots (docs/architecture.md, "Holds").
RING_SLOTS = 6
TICK_S = 0.2
READER_STOP_S = 2.0
SCHEDULER_STOP_S = 3.0
PUMP_DRAIN_S = 1.0
DELIVERY_STOP_S = 1.0
OUTBOX_OPEN_S = 30.0  # at boot: retry a locked, read-only or full outbox this long, then exit 2
OUTBOX_RETRY_S = 5.0  # after a reload: try again to open the outbox its rules need, every so often
MQTT_GOODBYE_S = 1.5
STATUS_EVERY_S = 5.0


class BootError(Exception):
    """The daemon cannot boot: one line naming the key, and the exit code (2 config, 3 model).

    Raised by a start step; `run()` logs the line (no traceback) and exits with the code,
    which the unit's RestartPreventExitStatus keeps systemd from restarting.
    """

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
        self._announced: set[str] = set()  # cameras whose status MQTT has been told
        self._hup = False
        self.http: Any = None  # the HTTP server, once started (vistream.ops.http.HttpServer)
        self.outbox: Outbox | None = None  # with rules, lines or Home Assistant (maybe from a reload)
        self.delivery: Delivery | None = None
        self.discovery: DiscoveryPublisher | None = None  # with mqtt.home_assistant
        self._outbox_late: str | None = None  # why the outbox a reload asked for is not open yet
        self._outbox_retry_at = 0.0
        self.notifier = Notifier()
        # Stall limits and watchdog pings derived from systemd's WatchdogSec, so that a hang is
        # recovered from inside before systemd gives up on the service (docs/operations.md).
        self.limits = Limits.for_watchdog(self.notifier.watchdog_timeout)
        self._summary = Summary()
        self._last_ping = self._last_status = 0.0
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
        if self.shard.active:
            mine = [c.name for c in self.cfg.enabled_cameras]
            log.log(logging.INFO if mine else logging.WARNING, "shard %s (%s): %d of %d camera(s)%s",
                    self.shard, self.cfg.mqtt.client_id, len(mine), len(self.full_cfg.cameras),
                    f": {', '.join(mine)}" if mine else "; idle until a reload gives it one")  # fmt: skip

    def _init_rings(self) -> None:
        remove_leftovers(self.instance)
        self._stack.callback(self.cameras.retire_all)
        # tmpfs allocates on write: rings that do not fit would kill a reader with SIGBUS later.
        shortage = shm_shortage(len(self.cfg.enabled_cameras) * self.cameras.layout.total_bytes)
        if shortage:
            raise BootError(2, shortage)
        for cam in self.cfg.enabled_cameras:
            self.cameras.make_ring(cam)

    def ring(self, name: str) -> AbstractContextManager[FrameRing | None]:
        """The camera's ring under a lease, for one copy, from any thread (vistream.ring.lifetime)."""
        return self.cameras.ring(name)

    def camera_config(self, name: str) -> CameraConfig | None:
        return self.cameras.config(name)

    def camera_status(self) -> list[CameraStatus]:
        return self.cameras.status()

    def _init_mqtt(self) -> None:
        try:
            self.mqtt = MqttPublisher(self.cfg.mqtt, mqtt_password(self.cfg.mqtt), self._availability_topic())
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
        if self.outbox:
            announce = [self.discovery.announce] if self.discovery is not None else []
            self.delivery = Delivery(self.outbox, self.mqtt, on_connect=announce)
            self.delivery.start()
        self.mqtt.start()
        self._stack.callback(self.mqtt.stop, MQTT_GOODBYE_S)
        # Stops before MQTT: what is in flight gets its PUBACK, the rest stays for next time.
        self._stack.callback(self._stop_delivery)

    def _availability_topic(self) -> str | None:
        """A shard's Last Will is its own topic: on `{prefix}/status` one dead shard would say the
        others are offline too."""
        if not self.shard.active:
            return None
        return self.shard.daemon_topic(self.cfg.mqtt.topic_prefix, self.full_cfg.mqtt.client_id)

    def _stop_delivery(self) -> None:
        if self.delivery:
            self.delivery.stop(DELIVERY_STOP_S)

    def _close_outbox(self) -> None:
        if self.outbox:
            self.outbox.close()

    def _needs_outbox(self) -> bool:
        cfg = self.cfg
        return bool(cfg.alerts or cfg.mqtt.home_assistant or any(c.lines for c in cfg.enabled_cameras))

    def _init_outbox(self) -> None:
        """The durable outbox of events and counters, when the config has anything to deliver."""
        # Closed here in the stop order (after the result pump) also when a reload opens it later.
        self._stack.callback(self._close_outbox)
        if self._needs_outbox():
            # Never start empty beside an outbox that is only locked or full: wait, then exit 2.
            self._open_outbox(OUTBOX_OPEN_S)

    def _open_outbox(self, open_timeout_s: float = 0.0) -> None:
        cfg = self.cfg
        path = cfg.state_dir / self.shard.state_file(OUTBOX_FILE)  # one outbox per shard
        try:
            bounds = cfg.outbox
            self.outbox = Outbox(
                path, max_rows=bounds.max_rows, max_age_s=bounds.max_age_s, open_timeout_s=open_timeout_s
            )
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise BootError(2, f"state_dir: cannot keep the event outbox in {path}: {reason}") from None

    def _init_discovery(self) -> None:
        assert self.outbox is not None  # home_assistant: true always opens it
        self.discovery = DiscoveryPublisher(self.full_cfg, self.outbox, self.shard)

    def _init_pump(self) -> None:
        self.alerts = Alerts(self.cfg, self.outbox, self.ring)
        self.pump = ResultPump(
            self.mqtt,
            self.scheduler.results,
            self._on_control,
            alerts=self.alerts,
            release=self._release_frame,
        )
        self.pump.start()
        self._stack.callback(self.pump.stop, PUMP_DRAIN_S)

    def _release_frame(self, camera: str, seq: int) -> None:
        with self.ring(camera) as ring:
            if ring is not None:
                ring.release(seq)

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
        log.info("HTTP on http://%s:%d/ (status page, /metrics, /healthz, /api)", host, self.metrics_port)
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
        """The next scheduler child, counting frames from where `base` left off; fresh queues."""
        spec = SchedulerSpec(
            model=self.cfg.model,
            batching=self.cfg.batching,
            rings=self.cameras.ring_names(),
            wake=self._wake,
            results=SPAWN.Queue(self.cfg.mqtt.queue_size),
            stats=SPAWN.Queue(4),
            control=SPAWN.Queue(),
            beat=SPAWN.Array("d", 3, lock=False),
            start_seqs={name: base.positions.get(name, 0) for name in self.cameras.ring_names()},
            detect_fps={c.name: c.detect_fps for c in self.cfg.enabled_cameras},
        )
        return Child("scheduler", run_scheduler, (spec,), self.logs, self._log_level), spec

    def _start_readers(self) -> None:
        self._stack.callback(self.cameras.stop_all, READER_STOP_S)
        for cam in self.cfg.enabled_cameras:
            self.cameras.start(cam)

    def _spawn_reader(self, cam: CameraConfig, ring_name: str) -> Child:
        return Child(f"reader {cam.name}", run_reader, (ReaderSpec(cam, ring_name, self._wake),), self.logs,
                     self._log_level, log_context=camera(cam.name))  # fmt: skip

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
            lim, timeout = self.limits, self.notifier.watchdog_timeout
            if lim.ping_s and timeout:
                log.info(
                    "systemd watchdog %.0fs: WATCHDOG=1 every %.0fs while results flow; a scheduler stuck "
                    "for %.0fs is restarted and has %.0fs to make progress before systemd steps in",
                    timeout, lim.ping_s, lim.stall_s, lim.reload_budget_s(timeout),
                )  # fmt: skip
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
            self._apply(load_config(self.config_path))
        except ConfigError as exc:
            for line in exc.problems:
                log.error("reload: %s", line)
            log.error("reload: %s is invalid; still running the previous config, unchanged", self.config_path)
        finally:
            self.notifier.ready()

    def _apply(self, full: Config) -> None:
        new = self.shard.view(full)
        change = reload_diff(self.cfg, new)
        if change.needs_restart:
            log.warning(
                "reload: %s changed; a restart of the service applies that", ", ".join(change.needs_restart)
            )
        log.info("reload: %s", change.describe())
        # Sections only a restart applies stay as they run, so self.cfg keeps describing the daemon.
        kept = {key.split(".")[0] for key in change.needs_restart}
        self.cfg = new.model_copy(update={k: getattr(self.cfg, k) for k in kept})
        self.full_cfg = full.model_copy(update={k: getattr(self.full_cfg, k) for k in kept})
        # Every reader that goes or is replaced stops at once, together: one deadline, not one each.
        self.cameras.stop([*change.removed, *change.restarted], READER_STOP_S, self.stop_flag)
        if self.stop_flag:  # SIGTERM during the reload: stop now, the rest of it would be undone anyway
            return
        for name in change.removed:
            self._remove_camera(name)
        cams = {c.name: c for c in self.cfg.enabled_cameras}
        rings = self.cameras.ring_names()
        for name, keys in change.restarted.items():
            self.cameras.start(cams[name])  # one that failed to start takes the new config for its retry
            if "detect_fps" in keys and name in rings:  # its tracker steps at the new rate
                self.scheduler.send(AddCamera(name, rings[name], cams[name].detect_fps))
        for cam in change.added:
            self._add_camera(cam)
        self._retry_failed(time.monotonic(), force=True)
        if change.scheduler:  # a new model or batching; readers and rings stay as they are
            self.scheduler.replace(SCHEDULER_STOP_S, self.stop_flag)  # SIGTERM meanwhile cuts it short
        if change.rules:
            if self.outbox is None and self._needs_outbox():
                self._open_outbox_late()
            self.alerts.reconfigure(self.cfg)
            if self.discovery is not None:
                self.discovery.update(self.full_cfg)  # into the outbox: Delivery sends it

    def _open_outbox_late(self) -> None:
        """The first rules or lines arrived with a reload: open the outbox and deliver from it.

        One attempt (the main loop must keep turning); `tick` tries again every OUTBOX_RETRY_S.
        """
        try:
            self._open_outbox()
        except BootError as exc:
            if self._outbox_late is None:  # once, not at every retry
                log.error("reload: %s; events of the new rules are not delivered, retrying", exc)
            self._outbox_late = str(exc)
            self._outbox_retry_at = time.monotonic() + OUTBOX_RETRY_S
            return
        if self._outbox_late is not None:
            log.warning("reload: the event outbox is open now")
            self._outbox_late = None
        assert self.outbox is not None
        self.alerts.reconfigure(self.cfg, self.outbox)
        self.delivery = Delivery(self.outbox, self.mqtt)
        self.delivery.start()  # stopped and closed where a delivery from the start would be

    def _retry_outbox(self, now: float) -> None:
        """The outbox a reload asked for could not be opened (locked, full): try again, while needed."""
        if self._outbox_late is None or now < self._outbox_retry_at:
            return
        if self._needs_outbox():
            self._open_outbox_late()
        else:  # a later reload took the rules away again
            self._outbox_late = None

    def _add_camera(self, cam: CameraConfig) -> bool:
        """Make the camera's ring and start its reader; a ring that does not fit marks it failed."""
        before = self.cameras.failed.get(cam.name)
        shortage = self.cameras.add(cam)
        if shortage is None:
            if before is not None:
                log.warning("camera %s: started, its ring fits now", cam.name, extra=camera(cam.name))
            self.scheduler.send(AddCamera(cam.name, self.cameras.ring_names()[cam.name], cam.detect_fps))
        elif shortage != before:  # once per cause, not at every retry
            log.error("camera %s not started, retrying every %.0fs and at reloads: %s", cam.name,
                      self.cameras.retry_s, shortage, extra=camera(cam.name))  # fmt: skip
            self.mqtt.camera_status(cam.name, False)
        return shortage is None

    def _retry_failed(self, now: float, *, force: bool = False) -> None:
        """Start the cameras whose ring did not fit once there is room: at a reload, or now and then."""
        for cam in self.cameras.retry_due(now, force=force):
            if not self._add_camera(cam):
                return  # no room for this one: none for the next either

    def _remove_camera(self, name: str) -> None:
        """Its reader is stopped already; tell the scheduler and MQTT, retire its ring."""
        self.scheduler.send(RemoveCamera(name))
        log.info("camera %s: removed, offline", name, extra=camera(name))
        self.mqtt.camera_status(name, False)
        self.mqtt.forget_camera(name)
        self._announced.discard(name)
        self.cameras.remove(name)

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
        self._retry_outbox(now)
        self._retry_failed(now)
        if self.discovery is not None:
            self.discovery.flush()  # what an unwritable outbox refused at the last update
        self.scheduler.drain()
        self._supervise_scheduler(now)
        if self.fatal:  # the model cannot be loaded (again): reloading forever would not help
            log.error("%s", self.fatal.message)
            self.exit_code = self.fatal.exit_code
            self.stop_flag.set()
            return
        self._supervise_threads(now)
        for rt in self.cameras.running:
            rt.supervise(now)
            self._set_online(rt, rt.streaming(now), now)
        self._notify_systemd(now)
        if self.ready:
            sampled = sum(int(rt.ring.header["head"]) for rt in self.cameras.running)
            self._summary.tick(now, sampled, self.scheduler_stats())
        if self._on_tick and self._on_tick(self):  # the demo's view: True when its time is up
            self.stop_flag.set()

    def progressing(self, now: float) -> bool:
        """Is the scheduler looping (batching, or idle for want of frames) and not stuck?"""
        live = self.scheduler.liveness
        return bool(self.scheduler.alive and live and live.progressing(now, self.limits.window_s))

    def outbox_problem(self) -> str | None:
        """Why events cannot be written to the outbox now (for /healthz and /metrics), or None."""
        return self.outbox.problem if self.outbox else self._outbox_late

    def flowing(self, now: float) -> bool:
        """Do results flow end to end: the scheduler looping, the result pump and the log hub turning?

        Idle is fine (no camera streams: nothing is due, and every stage still turns); a stage
        that is dead or stuck is not, whichever it is.
        """
        return self.progressing(now) and self.threads.turning(now, self.limits.window_s)

    @property
    def thread_restarts(self) -> dict[str, int]:
        return self.threads.restarts

    def _supervise_threads(self, now: float) -> None:
        """A stuck thread stops the daemon with exit 1 (the watchdog is starved by then as well)."""
        stuck = self.threads.supervise(now, self.limits.stall_s)
        if stuck:
            log.error("%s", stuck)
            self.exit_code = 1
            self.stop_flag.set()

    def _notify_systemd(self, now: float) -> None:
        n = self.notifier
        if not n.enabled:
            return
        ping = self.limits.ping_s
        if ping and now - self._last_ping >= ping and self.flowing(now):
            n.watchdog()
            self._last_ping = now
        if now - self._last_status >= STATUS_EVERY_S:
            self._last_status = now
            running = self.cameras.running
            online = sum(rt.online for rt in running)
            inferred = sum(c.inferred for c in self.scheduler_stats().cameras.values())
            n.status(f"{online}/{len(running)} cameras online, {inferred} frames inferred")

    def _supervise_scheduler(self, now: float) -> None:
        code = self.scheduler.supervise(now, self.limits)
        if code is not None:  # it cannot load the model: final
            if not self.fatal:
                self.stop_flag.sleep(0.5)  # its last words (a Fatal with the key) may still be queued
                self._drain_control()
            self.fatal = self.fatal or Fatal(code, f"the scheduler exited with code {code} loading the model")

    def _set_online(self, rt: CameraRuntime, online: bool, now: float) -> None:
        if rt.observe(online, now, announced=rt.name in self._announced):
            self._announced.add(rt.name)
            self.mqtt.camera_status(rt.name, online)

    def scheduler_stats(self) -> SchedulerStats:
        """Totals over every scheduler this daemon ran."""
        return self.scheduler.totals()
