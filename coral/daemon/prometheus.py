"""/metrics for Prometheus ([agent] / [colony] metrics_listen), through
prometheus_client: an HTTP server thread of its own serving a registry of
its own (never the library's global one).

The daemons' loops are single-threaded and their state is not safe to read
from another thread, so the loop never shares it: once per heartbeat it
builds a new snapshot (coral/daemon/metrics.py: a tuple of families, each
holding a new dict) and swaps it in with one assignment; a scrape reads
whichever snapshot is current, from its own thread, and never waits for
the loop nor makes it wait. Request latency goes into a prometheus_client
Histogram (its own lock, held for the few microseconds of an observation
or a scrape)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from coral.daemon.config import ConfigError, metrics_address
from coral.daemon.metrics import OTHER, Snapshot

log = logging.getLogger(__name__)

# Request latency buckets, in seconds: a local answer takes tens of
# microseconds; an attach waits for its processes (up to request_timeout).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)


class _SnapshotCollector:
    """Yields the families of the latest snapshot (read once per scrape)."""

    def __init__(self, latest: Callable[[], Snapshot]) -> None:
        self.latest = latest

    def describe(self) -> Iterable[Metric]:
        return []  # its names change with the snapshot; the registry checks none

    def collect(self) -> Iterator[Metric]:
        for f in self.latest():
            labels = [f.label] if f.label else []
            metric = (CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily)(f.name, f.help, labels=labels)
            for value, number in sorted(f.values.items()):
                metric.add_metric([value] if f.label else [], number)
            yield metric


class Metrics:
    """A daemon's /metrics: `publish` from the loop, `observe` a request's
    latency, `start` and `close` the HTTP thread."""

    def __init__(self, prefix: str, listen: str, setting: str, methods: dict[str, Iterable[str]]) -> None:
        """`methods`: by socket ("via" label), the methods it serves; each
        has a latency series from the start, and nothing else gets one."""
        self.prefix = prefix
        self.setting = setting  # for errors: "[agent] metrics_listen"
        self.host, self.port = metrics_address(listen)
        self.registry = CollectorRegistry()
        self._snapshot: Snapshot = ()
        self.registry.register(_SnapshotCollector(lambda: self._snapshot))
        self.latency = Histogram(f"{prefix}_request_duration_seconds",
                                 "Time from a request's arrival to its reply being sent, by socket and method",
                                 ["via", "method"], registry=self.registry, buckets=LATENCY_BUCKETS)
        self._series = {via: {m: self.latency.labels(via, m) for m in (*served, OTHER)} for via, served in methods.items()}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.port, self.host, self.registry)
        except OSError as exc:
            raise ConfigError(f"{self.setting} {self.host}:{self.port}: cannot listen: {exc.strerror or exc}") from None
        log.info("serving /metrics on http://%s:%d/metrics (%s)", self.host, self.port, self.setting)

    def publish(self, snapshot: Snapshot) -> None:
        """From the loop: the families a scrape serves from now on (one assignment, atomic)."""
        self._snapshot = snapshot

    def observe(self, via: str, method: str, seconds: float) -> None:
        series = self._series[via]
        (series.get(method) or series[OTHER]).observe(seconds)

    def timer(self, via: str) -> Callable[[str, float], None]:
        return lambda method, seconds: self.observe(via, method, seconds)

    def close(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()  # serve_forever returns
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self._server = self._thread = None
