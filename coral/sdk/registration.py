"""A process's registration with the local agent, kept alive: register,
heartbeat, register again when the agent restarts, unregister at exit.
Used by coral-run and by the Python SDK. Never raises on a missing agent:
it logs once and keeps retrying with back-off."""

from __future__ import annotations

import logging
import time
from typing import cast

import zmq

from coral.daemon.client import Client
from coral.daemon.errors import CoralError, Unavailable
from coral.daemon.liveness import Backoff
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

REGISTER_TIMEOUT = 2.0


class AgentRegistration:
    def __init__(
        self, agent_endpoint: str, request: pb.RegisterProcessRequest, context: zmq.Context[zmq.Socket[bytes]] | None = None
    ) -> None:
        self.request = request
        self.client = Client(agent_endpoint, REGISTER_TIMEOUT, context)
        self.registration_id = ""
        self.interval = 1.0
        self.backoff = Backoff()
        self._next_attempt = 0.0
        self._warned = False

    @property
    def registered(self) -> bool:
        return bool(self.registration_id)

    def tick(self, now: float) -> bool:
        """Register or heartbeat when due. Returns True when a registration
        was (re)made on this tick."""
        if now < self._next_attempt:
            return False
        try:
            if self.registration_id:
                beat = cast(
                    pb.ProcessHeartbeatResponse,
                    self.client.call("ProcessHeartbeat", pb.ProcessHeartbeatRequest(registration_id=self.registration_id)),
                )
                if beat.known:
                    self._next_attempt = now + self.interval
                    return False
                log.info("agent no longer knows this process (it restarted?); registering again")
            reply = cast(pb.RegisterProcessResponse, self.client.call("RegisterProcess", self.request))
        except Unavailable as exc:
            self.registration_id = ""
            delay = self.backoff.next_delay()
            if not self._warned:
                log.warning("coral agent not reachable (%s); will keep trying", exc)
                self._warned = True
            self._next_attempt = now + delay
            return False
        except CoralError as exc:
            self.registration_id = ""
            log.error("registration refused: %s: %s", exc.code, exc.message)
            self._next_attempt = now + self.backoff.next_delay()
            return False
        self.registration_id = reply.registration_id
        self.interval = max(0.1, reply.heartbeat_interval_ms / 1000)
        self.backoff.reset()
        self._warned = False
        self._next_attempt = now + self.interval
        log.info("registered service %r (pid %d) with the agent", self.request.service, self.request.pid)
        return True

    def unregister(self) -> None:
        if self.registration_id:
            try:
                self.client.call(
                    "UnregisterProcess", pb.UnregisterProcessRequest(registration_id=self.registration_id), timeout=1.0
                )
            except CoralError as exc:
                log.debug("unregister: %s", exc)
            self.registration_id = ""
        self.client.close()


def now() -> float:
    return time.monotonic()
