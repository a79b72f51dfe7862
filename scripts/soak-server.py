#!/usr/bin/env python3
"""A misbehaving Pyroscope for scripts/soak.sh, on 127.0.0.1.

It answers `POST /push.v1.PusherService/Push` and cycles through phases of
PHASE_SECS seconds each, in this order:

  ok        200 with an empty body (the body must be a gzip stream);
  down      the port is closed: connections are refused (and connections
            kept alive from before are reset);
  refusing  connections are accepted and reset at once;
  slow      the answer (200) comes after SLOW_SECS seconds;
  500       500 with a Connect-style JSON error;
  429       429 with Retry-After, alternately in seconds and as an HTTP
            date (both forms are honoured by the uploader).

Usage: soak-server.py PHASE_SECS [SLOW_SECS]

Prints `PORT <port>` on stdout once listening, then one `PHASE <name>
t=<seconds>` line on stderr per phase change, and at exit (stdin closed or
SIGTERM) `SERVER ...` with the requests answered per phase and status.
Python standard library only.
"""

import email.utils
import gzip
import http.server
import json
import signal
import socket
import struct
import sys
import threading
import time

PHASES = ["ok", "down", "refusing", "slow", "500", "429"]


class State:
    def __init__(self, phase_secs, slow_secs):
        self.start = time.monotonic()
        self.phase_secs = phase_secs
        self.slow_secs = slow_secs
        self.lock = threading.Lock()
        self.counts = {}
        self.retry_after_date = False

    def phase(self):
        elapsed = time.monotonic() - self.start
        return PHASES[int(elapsed // self.phase_secs) % len(PHASES)]

    def count(self, phase, what):
        with self.lock:
            key = f"{phase}:{what}"
            self.counts[key] = self.counts.get(key, 0) + 1

    def next_retry_after(self):
        with self.lock:
            self.retry_after_date = not self.retry_after_date
            if self.retry_after_date:
                return email.utils.formatdate(time.time() + 2, usegmt=True)
            return "2"


def make_handler(state):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reset(self, phase):
            """Reset, not a clean close: SO_LINGER with a zero timeout."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            state.count(phase, "reset")
            self.close_connection = True
            self.connection.close()

        def handle(self):
            phase = state.phase()
            if phase in ("down", "refusing"):
                self.reset(phase)
                return
            super().handle()

        def reply(self, status, body=b"", headers=()):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            phase = state.phase()
            if phase in ("down", "refusing"):
                # A connection kept alive from an earlier phase.
                self.reset(phase)
                return
            if self.path != "/push.v1.PusherService/Push":
                state.count(phase, "404")
                self.reply(404)
                return
            if phase == "slow":
                time.sleep(state.slow_secs)
            if phase == "500":
                state.count(phase, "500")
                error = {"code": "internal", "message": "soak: injected 500"}
                self.reply(500, json.dumps(error).encode(), [("Content-Type", "application/json")])
                return
            if phase == "429":
                state.count(phase, "429")
                error = {"code": "resource_exhausted", "message": "soak: slow down"}
                self.reply(
                    429,
                    json.dumps(error).encode(),
                    [("Content-Type", "application/json"), ("Retry-After", state.next_retry_after())],
                )
                return
            try:
                gzip.decompress(body)
            except Exception:  # noqa: BLE001 - any bad body is a 400
                state.count(phase, "400")
                self.reply(400, b'{"code":"invalid_argument","message":"not gzip"}')
                return
            state.count(phase, "200")
            self.reply(200)

    return Handler


def serve(state, port):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), make_handler(state))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    phase_secs = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    slow_secs = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    state = State(phase_secs, slow_secs)
    http.server.ThreadingHTTPServer.allow_reuse_address = True
    server = serve(state, 0)
    port = server.server_address[1]
    print(f"PORT {port}", flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

    current = None
    while not stop.is_set():
        phase = state.phase()
        if phase != current:
            elapsed = time.monotonic() - state.start
            print(f"PHASE {phase} t={elapsed:.0f}", file=sys.stderr, flush=True)
            if phase == "down" and server is not None:
                server.shutdown()
                server.server_close()
                server = None
            elif phase != "down" and server is None:
                while server is None and not stop.is_set():
                    try:
                        server = serve(state, port)
                    except OSError:
                        time.sleep(0.05)
            current = phase
        stop.wait(0.05)
    if server is not None:
        server.shutdown()
    with state.lock:
        counts = " ".join(f"{k}={v}" for k, v in sorted(state.counts.items()))
    print(f"SERVER {counts}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
