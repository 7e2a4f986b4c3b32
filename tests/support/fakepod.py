"""A fixture metrics server whose numbers the test controls: it serves vLLM-format ``/metrics``
text (tests/support/vllm_text.py) whose counters and histograms advance with wall time at the request
rate and latencies the test sets, and records the sample budgets POSTed to ``/admin/samples`` on
a second listener (``admin_url``), as the real worker serves its admin API apart from its front,
with the Authorization header each push carried (``admin_authorization``).
Runs in threads (stdlib ThreadingHTTPServer), so a test's event loop and blocking pollers both
work beside it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from grm_worker.front_metrics import SCORE_LATENCY_BUCKETS
from support.vllm_text import Engine, Hist, score_latency_text, vllm_text


class FakeWorker:
    """One worker pod's metrics: ``rps`` requests per second, each with the next TTFT of the
    cycle ``ttft`` (and ``itl``, ``e2e``); gauges as set. ``old_names`` uses pre-0.10 names.

    ``e2e`` is the latency of a whole GRM score, exported as the front's
    ``grm_score_latency_seconds`` (what the operator reads as e2e); vLLM's per-request
    ``vllm:e2e_request_latency_seconds`` gets ``request_e2e`` (one critique sample), kept apart
    so a test can tell which one a source read."""

    def __init__(
        self,
        rps: float = 0.0,
        ttft: Sequence[float] = (0.1,),
        itl: Sequence[float] = (0.03,),
        e2e: Sequence[float] = (5.0,),
        request_e2e: Sequence[float] = (1.0,),
        running: float = 0.0,
        waiting: float = 0.0,
        kv_cache: float = 0.0,
        old_names: bool = False,
        extra: str = "",
        shed_per_request: int | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.engine = Engine()
        self.served = 0
        self.pending = 0.0
        self.last = time.monotonic()
        self.old_names = old_names
        #: Sample budgets POSTed to /admin/samples, in order (the operator's pushes).
        self.samples: list[int] = []
        #: The Authorization header of each of those pushes (None: absent), in the same order.
        self.admin_authorization: list[str | None] = []
        self.extra = extra
        #: With a number, the GRM front's grm_score_samples_shed_total: that many samples shed per
        #: request served (None: the counter is absent, as on a plain vLLM pod).
        self.shed_per_request = shed_per_request
        self.shed = 0
        #: Shadow verdicts compared per second (the GRM front's grm_shadow_verdicts_total; 0: the
        #: counters are absent) and the share of them that agree with the reference.
        self.shadow_rate = 0.0
        self.shadow_agreement = 1.0
        self.shadow_pending = 0.0
        self.shadow_verdicts = 0
        self.rps = rps
        self.ttft, self.itl, self.e2e = list(ttft), list(itl), list(e2e)
        self.request_e2e = list(request_e2e)
        self.score_latency = Hist(SCORE_LATENCY_BUCKETS)
        self.engine.running, self.engine.waiting, self.engine.kv_cache = running, waiting, kv_cache
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.admin_server = ThreadingHTTPServer(("127.0.0.1", 0), self._admin_handler())
        for server in (self.server, self.admin_server):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/metrics"

    @property
    def admin_url(self) -> str:
        """Base URL of the admin listener (``/admin/samples``), not the metrics port."""
        return f"http://127.0.0.1:{self.admin_server.server_address[1]}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def set(self, **values: Any) -> None:
        """Change rates, latencies or gauges from now on (what was served so far stays)."""
        with self.lock:
            self._advance()
            for key, value in values.items():
                if key in ("running", "waiting", "kv_cache"):
                    setattr(self.engine, key, value)
                elif key in ("ttft", "itl", "e2e", "request_e2e"):
                    setattr(self, key, list(value))
                else:
                    setattr(self, key, value)

    def _advance(self) -> None:
        now = time.monotonic()
        self.shadow_pending += self.shadow_rate * (now - self.last)
        self.shadow_verdicts += int(self.shadow_pending)
        self.shadow_pending -= int(self.shadow_pending)
        self.pending += self.rps * (now - self.last)
        self.last = now
        n = int(self.pending)
        self.pending -= n
        for _ in range(n):
            i = self.served
            self.engine.ttft.observations.append(self.ttft[i % len(self.ttft)])
            self.engine.itl.observations.append(self.itl[i % len(self.itl)])
            self.engine.e2e.observations.append(self.request_e2e[i % len(self.request_e2e)])
            self.score_latency.observations.append(self.e2e[i % len(self.e2e)])
            self.engine.queue.observations.append(0.0)
            self.served += 1
        self.engine.success += n
        self.engine.prompt_tokens += 1000 * n
        self.engine.generation_tokens += 300 * n
        self.shed += n * (self.shed_per_request or 0)

    def text(self) -> str:
        with self.lock:
            self._advance()
            text = vllm_text({"0": self.engine}, old_names=self.old_names) + self.extra
            text += score_latency_text(self.score_latency)
            if self.shed_per_request is not None:
                text += f"# TYPE grm_score_samples_shed counter\ngrm_score_samples_shed_total {self.shed}\n"
            if self.shadow_rate > 0 or self.shadow_verdicts:
                agreed = int(self.shadow_verdicts * self.shadow_agreement)
                text += "# TYPE grm_shadow_verdicts counter\n"
                text += f'grm_shadow_verdicts_total{{mode="live"}} {self.shadow_verdicts}\n'
                text += "# TYPE grm_shadow_agreements counter\n"
                text += f'grm_shadow_agreements_total{{mode="live"}} {agreed}\n'
            return text

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                body = worker.text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        return Handler

    def _admin_handler(self) -> type[BaseHTTPRequestHandler]:
        worker = self

        class AdminHandler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != "/admin/samples":
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                value = json.loads(self.rfile.read(length) or b"{}").get("samples")
                with worker.lock:
                    worker.samples.append(int(value))
                    worker.admin_authorization.append(self.headers.get("Authorization"))
                body = json.dumps({"samples": value}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        return AdminHandler

    def close(self) -> None:
        for server in (self.server, self.admin_server):
            server.shutdown()
            server.server_close()
