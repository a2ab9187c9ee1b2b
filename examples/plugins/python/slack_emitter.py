#!/usr/bin/env python3
"""slack_emitter.py: a POLKU emitter plugin that sends events to Slack.

POLKU routes events with route_to ["slack"] (or with no route_to) here; each
one becomes a Slack message posted to an incoming webhook. The plugin
registers itself with the gateway, keeps the registration alive with
heartbeats, and unregisters when it is stopped (SIGTERM or Ctrl-C).

Environment:
  SLACK_WEBHOOK_URL      the Slack incoming-webhook URL (required)
  PLUGIN_PORT            port to serve on, on 127.0.0.1 (default 9001)
  PLUGIN_ADVERTISE_ADDR  address the gateway dials (default 127.0.0.1:PLUGIN_PORT)
  POLKU_ADDR             the gateway's gRPC address (default localhost:50051);
                         "off" serves without registering
  POLKU_PLUGIN_TOKEN     sent as `authorization: Bearer <token>` to the registry

Setup: pip install -r requirements.txt && ./gen.sh
"""

import logging
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # keep gRPC's own chatter off stderr

try:
    import grpc
    import requests
except ImportError as e:
    sys.exit(f"{e}: run `pip install -r requirements.txt && ./gen.sh` first")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

log = logging.getLogger("slack-emitter")


def load_stubs():
    """Imports the generated stubs, running gen.sh first when they are missing."""
    try:
        import polku_pb.plugin_pb2  # noqa: F401
    except ImportError:
        log.info("polku_pb/ missing: running gen.sh")
        env = dict(os.environ, PYTHON=sys.executable)
        gen = os.path.join(HERE, "gen.sh")
        if subprocess.run(["bash", gen], env=env).returncode != 0:
            sys.exit("cannot generate the stubs: run `pip install -r requirements.txt && ./gen.sh`")


logging.basicConfig(
    stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
)
load_stubs()

from google.protobuf.empty_pb2 import Empty  # noqa: E402
from polku_pb.plugin_pb2 import (  # noqa: E402
    EMITTER,
    EmitFailure,
    EmitResponse,
    HealthResponse,
    HeartbeatRequest,
    PluginInfo,
    RegisterRequest,
    UnregisterRequest,
)
from polku_pb.plugin_pb2_grpc import (  # noqa: E402
    EmitterPluginServicer,
    PluginRegistryStub,
    add_EmitterPluginServicer_to_server,
)

SLACK_WEBHOOK = os.environ.get("SLACK_WEBHOOK_URL", "")
PORT = int(os.environ.get("PLUGIN_PORT", "9001"))
ADVERTISE = os.environ.get("PLUGIN_ADVERTISE_ADDR", f"127.0.0.1:{PORT}")
POLKU_ADDR = os.environ.get("POLKU_ADDR", "localhost:50051")
TOKEN = os.environ.get("POLKU_PLUGIN_TOKEN", "")
TIMEOUT = (3.05, 10)  # connect, read, for each Slack post
RPC_TIMEOUT = 5  # seconds, for each registry call

INFO = PluginInfo(
    name="slack-emitter",
    version="0.1.0",
    type=EMITTER,
    emitter_name="slack",  # ← POLKU knows us as "slack"
    description="Posts each event to a Slack incoming webhook",
)


class SlackEmitter(EmitterPluginServicer):
    """Serves polku.v1.EmitterPlugin."""

    def __init__(self):
        self._local = threading.local()  # one requests.Session per worker thread
        self.shut_down = threading.Event()  # set once the gateway called Shutdown

    def _session(self):
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def Info(self, request, context):
        return INFO

    def Health(self, request, context):
        return HealthResponse(healthy=True)

    def Emit(self, request, context):
        failures = []
        for index, event in enumerate(request.events):
            # Format the event nicely
            message = f"*{event.event_type}* from `{event.source}`"

            # Send to Slack
            why, retryable = self._post(message)
            if why is not None:
                failures.append(
                    EmitFailure(event_id=event.id, message=why, retryable=retryable, index=index)
                )
        if failures:
            log.warning("emit: %d of %d events failed (%s)",
                        len(failures), len(request.events), failures[0].message)
        return EmitResponse(
            success_count=len(request.events) - len(failures), failures=failures
        )

    def Shutdown(self, request, context):
        # Every post is sent before Emit returns: nothing is pending.
        self.shut_down.set()
        return Empty()

    def _post(self, text):
        """Posts one message. Returns (None, _) on success, else (why, retryable)."""
        try:
            r = self._session().post(SLACK_WEBHOOK, json={"text": text}, timeout=TIMEOUT)
        except requests.RequestException as e:  # connection refused, timeout, ...
            return f"slack unreachable: {type(e).__name__}", True
        if 200 <= r.status_code < 300:
            return None, False
        body = r.text[:200].strip()
        retryable = r.status_code >= 500 or r.status_code == 429
        return f"slack answered {r.status_code}: {body}", retryable


def keep_registered(stop, unregistered):
    """Registers with the gateway, sends heartbeats, registers again when the
    gateway forgot us (it restarted, or heartbeats were missed), and
    unregisters once `stop` is set (then sets `unregistered`)."""
    metadata = [("authorization", f"Bearer {TOKEN}")] if TOKEN else None
    channel = grpc.insecure_channel(POLKU_ADDR.removeprefix("http://"))
    registry = PluginRegistryStub(channel)
    plugin_id = None
    every = backoff = 0.2
    reachable = True
    last_failure = None  # a failing Register is logged once per status code
    while not stop.is_set():
        if plugin_id is None:
            try:
                r = registry.Register(
                    RegisterRequest(info=INFO, address=ADVERTISE),
                    timeout=RPC_TIMEOUT, metadata=metadata,
                )
                plugin_id = r.plugin_id
                every = max(r.heartbeat_interval_ms, 50) / 1000
                backoff = 0.2
                reachable, last_failure = True, None
                log.info("registered with %s as %s (heartbeat every %.1fs)",
                         POLKU_ADDR, plugin_id, every)
            except grpc.RpcError as e:
                if e.code() != last_failure:
                    log.warning("register failed, retrying: %s: %s", e.code().name, e.details())
                    last_failure = e.code()
                every = backoff
                backoff = min(backoff * 2, 5.0)
        else:
            try:
                registry.Heartbeat(
                    HeartbeatRequest(plugin_id=plugin_id), timeout=RPC_TIMEOUT, metadata=metadata
                )
                if not reachable:
                    log.info("gateway reachable again")
                    reachable = True
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("the gateway forgot this plugin; registering again")
                    plugin_id = None
                    continue
                if reachable:
                    log.warning("heartbeat failed: %s: %s", e.code().name, e.details())
                    reachable = False
        stop.wait(every)

    if plugin_id is not None:
        try:
            registry.Unregister(
                UnregisterRequest(plugin_id=plugin_id), timeout=RPC_TIMEOUT, metadata=metadata
            )
            log.info("unregistered %s", plugin_id)
            unregistered.set()
        except grpc.RpcError as e:
            log.warning("unregister failed: %s: %s", e.code().name, e.details())
    channel.close()


def main():
    if not SLACK_WEBHOOK:
        log.error("SLACK_WEBHOOK_URL is not set")
        return 2

    # Start the plugin
    server = grpc.server(ThreadPoolExecutor(max_workers=8))
    emitter = SlackEmitter()
    add_EmitterPluginServicer_to_server(emitter, server)
    try:
        if server.add_insecure_port(f"127.0.0.1:{PORT}") == 0:
            raise RuntimeError("port in use?")
    except RuntimeError as e:
        log.error("cannot listen on 127.0.0.1:%d: %s", PORT, e)
        return 1
    server.start()
    log.info("serving EmitterPlugin on 127.0.0.1:%d", PORT)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())

    registrar = None
    unregistered = threading.Event()
    if POLKU_ADDR.lower() != "off":
        registrar = threading.Thread(
            target=keep_registered, args=(stop, unregistered), daemon=True
        )
        registrar.start()

    while not stop.wait(1):
        pass
    log.info("stopping")
    if registrar is not None:
        registrar.join(timeout=2 * RPC_TIMEOUT)
    if unregistered.is_set():
        # Once unregistered, the gateway calls Shutdown (flush): answer it
        # before going away.
        emitter.shut_down.wait(timeout=2)
    server.stop(grace=5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
