"""Load test against a running hub: WebSocket and SSE subscribers plus publishers.

Headless and bounded (writes CSV files and an HTML report):

    locust -f bench/locustfile.py --host http://127.0.0.1:8000 --headless \
        -u 300 -r 100 -t 60s --csv bench/results/locust --html bench/results/locust.html

Every publication carries `t0` (time.time_ns() when published); subscribers
report each delivery to locust as a request named "delivery" whose response
time is the publish-to-receive latency in ms (same machine, same clock).
Settings: HUBBUB_API_KEY for the publishers (not needed against --dev on
loopback); LOAD_WS_URL to point WebSocket users at the fast port (default:
`/ws` on --host); LOAD_TOPIC (default load.t); LOAD_PUBLISH_RATE per
publisher (default 10/s).
"""
from __future__ import annotations

import json
import os
import time

import gevent
import websocket
from locust import FastHttpUser, User, between, constant_throughput, task

TOPIC = os.environ.get("LOAD_TOPIC", "load.t")
API_KEY = os.environ.get("HUBBUB_API_KEY", "")
PUBLISH_RATE = float(os.environ.get("LOAD_PUBLISH_RATE", "10"))


def report_delivery(user: User, kind: str, data: dict, size: int) -> None:
    t0 = data.get("t0") if isinstance(data, dict) else None
    if t0 is None:
        return
    user.environment.events.request.fire(
        request_type=kind, name="delivery", response_time=(time.time_ns() - t0) / 1e6,
        response_length=size, exception=None, context={})


class WebSocketSubscriber(User):
    """A raw WebSocket client; a gevent greenlet receives while the user idles."""

    weight = 6
    wait_time = between(1, 2)

    def on_start(self) -> None:
        base = os.environ.get("LOAD_WS_URL") or self.host.replace("http", "ws", 1) + "/ws"
        started = time.perf_counter()
        try:
            self.ws = websocket.create_connection(f"{base}?topic={TOPIC}", timeout=10)
            error = None
        except Exception as exc:  # reported, then the user stops
            self.ws, error = None, exc
        self.environment.events.request.fire(
            request_type="WS", name="connect", response_time=(time.perf_counter() - started) * 1000,
            response_length=0, exception=error, context={})
        if self.ws is not None:
            self.ws.settimeout(None)
            self.receiver = gevent.spawn(self.receive)

    def receive(self) -> None:
        while True:
            try:
                frame = self.ws.recv()
            except Exception:
                return
            if not frame:  # websocket-client hands a close frame over as "": the socket is done
                return
            for line in frame.split("\n"):
                if not line:
                    continue
                message = json.loads(line)
                if message.get("op") == "message":
                    report_delivery(self, "WS", message.get("data"), len(line))
                elif message.get("op") == "ping":  # the ASGI port's app-level heartbeat
                    self.ws.send('{"op":"pong"}')

    @task
    def stay(self) -> None:
        pass  # the greenlet does the work; the task just keeps the user alive

    def on_stop(self) -> None:
        if self.ws is not None:
            self.ws.close()


class SSESubscriber(FastHttpUser):
    """One long SSE stream per user, reopened if it ends."""

    weight = 3
    wait_time = between(0.5, 1)

    @task
    def listen(self) -> None:
        for line in self.client.iter_lines(f"/sse?topic={TOPIC}", name="sse stream"):
            if line.startswith("data: ") and '"t0"' in line:
                envelope = json.loads(line[6:])
                report_delivery(self, "SSE", envelope.get("data"), len(line))


class Publisher(FastHttpUser):
    weight = 1
    wait_time = constant_throughput(PUBLISH_RATE)

    @task
    def publish(self) -> None:
        headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
        self.client.post("/publish", json={"topic": TOPIC, "data": {"t0": time.time_ns(), "pad": "x" * 64}},
                         headers=headers, name="publish")
