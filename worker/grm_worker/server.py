"""The worker's HTTP front: OpenAI API relay, GRM scoring, health, metrics, admin, and drain.

Routes on the front's port (``port``, the one the GRMDeployment's Service forwards):

* ``POST /v1/completions``, ``POST /v1/chat/completions`` (SSE streaming too), ``GET /v1/models``:
  relayed to the engine unchanged.
* ``POST /v1/grm/score`` ``{query, responses[2..16], samples?, principles?, sampling?, early_exit?,
  seed?}`` → ``{scores, mean_scores, winner, samples_used, samples_budget, shed, parse_failures,
  early_exit, rounds}``. ``samples`` can only lower the current budget. ``shed``: samples of
  ``samples_budget`` not drawn because the engine had requests waiting (0 normally, see below).
* ``GET /health``: live (200 unless the engine died). ``GET /ready``: 200 only once the engine
  answers and while not draining.
* ``GET /metrics``: the engine's ``vllm:*`` families (plus GPU gauges) then the front's ``grm_*``
  (:mod:`grm_worker.front_metrics`).

Shadow scoring (:mod:`grm_worker.shadow`): a fraction of answered score requests is re-scored by
the reference variant in the background and the verdicts compared; a request carrying
``X-GRM-Shadow`` is one such, answered here as the reference and not counted as demand.

Routes of the admin API (:attr:`Front.admin_app`), served on a listener of its own
(``admin_port``, 8001 in the operator's pods) that the Service never lists, so no client of the
Service can change the budget or inject faults; the front's port answers 404 there. Pod IPs are
reachable from every pod of the cluster, so the admin API is also authenticated: each request
must carry ``Authorization: Bearer <token>`` (the token from :data:`ADMIN_TOKEN_ENV`, compared in
constant time), or it is answered 401. A worker without a token refuses every admin request,
unless it was started with ``admin_insecure`` (``--admin-insecure``: local development only).

* ``GET|POST /admin/samples`` ``{samples}``: the sample budget, settable within [min, max] (the
  operator lowers it under load, reaching each pod on ``<podIP>:admin_port``).
  ``GET|POST /admin/sim`` ``{slowdown?, error_rate?, crash?}``: fault injection, sim engine only.

Abandoned requests: a client that disconnects before its answer (a timeout, a cancelled RL step)
stops the work done for it. aiohttp cancels the handler when its connection is lost
(:data:`RUNNER_OPTIONS`, ``handler_cancellation``); the cancellation reaches the engine call: a
vLLM child sees its HTTP request closed and aborts it, the sim engine takes the sequences out of
its batch. A score request stops all its k-sample rounds at once. Counted in
``grm_requests_abandoned_total{endpoint}``; streamed and non-streamed requests alike.

Sample shedding (``scoring.shed_floor`` set): a background task reads the engine's queue
(:meth:`Engine.queue_reading`: vLLM's ``vllm:num_requests_waiting`` and queue-time histogram)
every ``shed_poll_s``. While the batch is full — requests wait and those admitted since the last
read waited ``shed_queue_s`` or more, or none was admitted (:mod:`grm_worker.contract.shedding`; a request
between two engine steps does not count) — a new score request runs with ``shed_floor`` samples
(the fewest that meet the deployment's quality floor on this variant) instead of its budget: the
queue drains budget/floor times faster at once (k = 4 → 1: 4×), with no replica's cold start,
and each request's quality stays ≥ the floor. The samples not drawn are counted in
``grm_score_samples_shed_total``, which the operator adds to the demand it scales replicas for.
An unknown queue (the read failed, or is older than max(3 polls, 2 s)) never sheds.

Connections (kube-proxy balances per *connection* and retries nothing, so a keep-alive client
stays on the pod it first reached): every response on a connection older than
``connection_max_age_s`` (±10 % jitter, from its first request) or at its
``connection_max_requests``-th response says ``Connection: close``, so the client's next request
opens a new connection, which kube-proxy may send to a replica added since (gRPC's
MaxConnectionAge, for HTTP/1.1, which has no GOAWAY). Counted in ``grm_connections_recycled_total``.

Drain (:meth:`Front.drain`, on SIGTERM after the pod's preStop): readiness fails at once (the pod
is already out of its Service's ready endpoints; this is the belt to that brace), every request
is still served — on the connections the worker has and on any new one a lagging proxy still
sends — and answered with ``Connection: close``, so a busy connection closes right after its
response; a connection that carries no request is closed once it has been idle for 2 s (closing it
at once, as Go's ``http.Server.Shutdown`` and aiohttp's own cleanup do, races a request the client
may be sending on it). The drain ends when no connection is left, or after ``drain_timeout_s``;
then the caller stops the engine. Never a 503 to a request the worker could still serve: a client
whose request reached this pod gets its answer from it.

One concept in one module (the front's HTTP app: routing, the score endpoint, proxying and
draining), its metrics in :mod:`grm_worker.front_metrics`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import random
import select
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from grm_worker.contract.admin import ADMIN_TOKEN_ENV
from grm_worker.contract.config import WorkerConfig
from grm_worker.contract.shedding import QueueReading, queue_blocked, shed_samples
from grm_worker.engines.base import Engine, EngineError, EngineReply
from grm_worker.front_metrics import FrontMetrics
from grm_worker.scoring import ScoreRequest, score
from grm_worker.shadow import SHADOW_HEADER, Shadow, busy_response

__all__ = ["RUNNER_OPTIONS", "Front", "engine_app"]

log = logging.getLogger("grm_worker.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: How the front's :class:`aiohttp.web.AppRunner` (or test server) must be made: a handler whose
#: client disconnected is cancelled (aiohttp's default since 3.9 lets it run to its end for
#: nobody: a 16-sample score on a 27B model is ~30 s of GPU time wasted per abandoned request).
RUNNER_OPTIONS: dict[str, Any] = {"handler_cancellation": True}

# During a drain, a connection that has not sent a request yet is closed only once it is this old
# (Go's http.Server.Shutdown treats a new connection as idle after 5 s): its first request may be
# on the way, and closing it then would fail that request.
_NEW_CONNECTION_GRACE_S = 5.0
# During a drain, a connection that carries no request is closed once it has been idle this long.
# Closing an idle HTTP/1.1 connection always races a request the client may be sending on it (the
# request is lost: no client retries a POST), and a busy worker's event loop reads a request that
# arrived only milliseconds later. Seen in the keep-alive drain test (grm_testkit.l4path) when idle
# connections were closed the instant the drain began: an httpx pool at 4 req/s lost a request
# (ReadError) in the first drain.
# Waiting leaves the connection to its client: one that keeps sending uses it and gets
# `Connection: close` (no race); one that stopped closes it itself (httpx and openai after 5 s
# idle); a connection its pool has passed over for 2 s is rarely chosen in the next millisecond.
_DRAIN_IDLE_CLOSE_S = 2.0
# How often the drain looks at the connections (each look is a few µs per connection).
_DRAIN_POLL_S = 0.05
# gRPC's MaxConnectionAge jitter: ±10 %, so connections opened together (a client's pool at start)
# are not all recycled in the same instant.
_AGE_JITTER = 0.1

# A queue reading older than this many polls (and at least _QUEUE_STALE_MIN_S) counts as unknown:
# the engine's /metrics hung or the event loop stalled, and an old queue must not shed new requests.
_QUEUE_STALE_POLLS = 3
_QUEUE_STALE_MIN_S = 2.0


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = {
        400: "BadRequestError",
        401: "AuthenticationError",
        404: "NotFoundError",
        503: "ServiceUnavailableError",
    }.get(status, "InternalServerError")
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": status}},
        status=status,
        headers=headers,
    )


def _client_left(request: web.BaseRequest) -> bool:
    """Whether the request's connection is gone (aiohttp drops its transport when it is lost,
    before it cancels the handler)."""
    return request.transport is None


async def _relay(request: web.Request, reply: EngineReply) -> web.StreamResponse:
    if reply.stream is None:
        return web.json_response(reply.body, status=reply.status)
    response = web.StreamResponse(
        status=reply.status, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    stream = reply.stream
    try:
        async for chunk in stream:
            await response.write(chunk)
    finally:
        # A client that leaves makes the write fail: closing the stream now (not when the garbage
        # collector finalises it) lets the engine abort the request at once, as vLLM does.
        if isinstance(stream, AsyncGenerator):
            await stream.aclose()
    await response.write_eof()
    return response


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise EngineError("request body is not valid JSON", 400) from None
    if not isinstance(body, dict):
        raise EngineError("request body must be a JSON object", 400)
    return body


def _input_pending(transport: asyncio.BaseTransport) -> bool:
    """Whether the connection's socket has bytes (or the client's FIN) the event loop has not read
    yet: a request that arrived while the worker was busy. Closing then would reset it, so the
    drain leaves the connection for a later look (the race left is the network's transit time)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
    except (OSError, ValueError):  # closed meanwhile
        return False
    return bool(readable)


@dataclasses.dataclass
class _Connection:
    """What the front knows of one client connection: when its first request came, how many
    responses it has had, and the age at which it is recycled (jittered per connection)."""

    opened_at: float
    max_age_s: float | None
    responses: int = 0
    busy: int = 0  # requests in its handler now
    idle_since: float = 0.0  # when its last handler returned (monotonic)


class Front:
    """The aiohttp application of one worker around one engine."""

    def __init__(
        self,
        config: WorkerConfig,
        engine: Engine,
        *,
        admin_token: str | None = None,
        admin_insecure: bool = False,
    ) -> None:
        """``admin_token``: the bearer token every admin request must carry (the worker's
        :data:`ADMIN_TOKEN_ENV`); without one, admin requests are refused unless
        ``admin_insecure`` (local development: anyone who reaches the admin port may use it)."""
        self.config = config
        self._admin_token = admin_token.encode() if admin_token else None
        self._admin_insecure = admin_insecure
        self.engine = engine
        self.samples_budget = config.scoring.samples_default
        self.draining = False
        self.in_flight = 0
        self._seed = 0
        self.metrics = FrontMetrics(config)
        self.metrics.budget.set(self.samples_budget)
        # The engine's queue as last read by the shedding poll (None: unknown; 0: no full batch,
        # a request between two steps included) and when (monotonic); the read before, raw.
        self.engine_queue: float | None = None
        self._queue_reading: QueueReading | None = None
        self.engine_queue_at = 0.0
        self._queue_stale_s = max(_QUEUE_STALE_POLLS * config.scoring.shed_poll_s, _QUEUE_STALE_MIN_S)
        self._queue_poll: asyncio.Task[None] | None = None
        # Per client connection (keyed by its transport, gone with it): for the age and request caps.
        self._connections: weakref.WeakKeyDictionary[object, _Connection] = weakref.WeakKeyDictionary()
        self._jitter = random.Random()
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._connection_seen])
        app.on_response_prepare.append(self._connection_header)
        app.router.add_post("/v1/completions", self._tracked("completions", self._openai))
        app.router.add_post("/v1/chat/completions", self._tracked("chat", self._openai))
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/grm/score", self._tracked("score", self._score))
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        if config.scoring.shed_floor is not None:
            app.cleanup_ctx.append(self._polling_queue)
        self.shadow = Shadow(config.shadow, config.variant, self.metrics.registry)
        app.cleanup_ctx.append(self.shadow.running)
        self.app = app
        admin = web.Application(middlewares=[self._admin_authorized])
        admin.router.add_route("*", "/admin/samples", self._admin_samples)
        admin.router.add_route("*", "/admin/sim", self._admin_sim)
        #: The admin API, for the listener on ``admin_port`` (never the front's port).
        self.admin_app = admin

    # --- the engine's queue (sample shedding) -------------------------------------------------------
    async def _polling_queue(self, app: web.Application) -> AsyncIterator[None]:
        self._queue_poll = asyncio.create_task(self._poll_queue(), name="grm-engine-queue-poll")
        yield
        await self._stop_queue_poll()

    async def _poll_queue(self) -> None:
        while True:
            await self.read_queue()
            await asyncio.sleep(self.config.scoring.shed_poll_s)

    async def _stop_queue_poll(self) -> None:
        task, self._queue_poll = self._queue_poll, None
        self.engine_queue, self._queue_reading = None, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def read_queue(self) -> float | None:
        """Read the engine's queue once and keep what shedding acts on: the requests waiting when
        the batch is full (:func:`grm_worker.contract.shedding.queue_blocked` against the previous read), else
        0. A failed read (engine not up, no such gauge, unparsable text, no answer within the
        staleness bound) is unknown: None, never shed."""
        reading: QueueReading | None = None
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the result and drops a
            # cancellation that lands as the read completes, so the poll outlived drain and cleanup.
            async with asyncio.timeout(self._queue_stale_s):
                reading = await self.engine.queue_reading()
        except Exception as error:  # any failure means "unknown"; the poll must keep running
            log.debug("engine queue unknown: %s: %s", type(error).__name__, error)
        blocked = queue_blocked(self._queue_reading, reading, self.config.scoring.shed_queue_s)
        self._queue_reading = reading
        waiting = None if blocked is None or reading is None else (reading.waiting if blocked else 0.0)
        self.engine_queue, self.engine_queue_at = waiting, time.monotonic()
        self.metrics.engine_queue.set(-1 if waiting is None else waiting)
        return waiting

    def queue_waiting(self) -> float | None:
        """The engine's queue as last read, or None when unknown or stale."""
        if self.engine_queue is None or time.monotonic() - self.engine_queue_at > self._queue_stale_s:
            return None
        return self.engine_queue

    # --- connections: age and request caps, Connection: close while draining ----------------------
    def _connection(self, request: web.BaseRequest) -> _Connection | None:
        transport = request.transport
        if transport is None:  # the client already left
            return None
        known = self._connections.get(transport)
        if known is None:
            limit: float | None = self.config.connection_max_age_s or None  # 0: no cap
            if limit is not None:
                limit *= 1.0 + self._jitter.uniform(-_AGE_JITTER, _AGE_JITTER)
            known = self._connections[transport] = _Connection(time.monotonic(), limit)
        return known

    @web.middleware
    async def _connection_seen(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        # Registered when its first request starts: the age counts from there.
        connection = self._connection(request)
        if connection is None:
            return await handler(request)
        connection.busy += 1
        try:
            return await handler(request)
        finally:
            connection.busy -= 1
            connection.idle_since = time.monotonic()

    async def _connection_header(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """on_response_prepare: the headers are computed but not sent; a ``Connection: close`` set
        here reaches the client, and ``force_close`` makes aiohttp close the connection after it."""
        connection = self._connection(request)
        if connection is None:
            return
        connection.responses += 1
        reason: str | None = None
        age = time.monotonic() - connection.opened_at
        if self.draining:
            reason = "draining"
        elif connection.max_age_s is not None and age >= connection.max_age_s:
            reason = "max_age"
        elif (cap := self.config.connection_max_requests) is not None and connection.responses >= cap:
            reason = "max_requests"
        if reason is None or (response.keep_alive is False and "Connection" in response.headers):
            return  # nothing to do, or closing already (the client asked for it)
        response.force_close()
        response.headers["Connection"] = "close"
        self.metrics.connections_recycled.labels(reason=reason).inc()

    # --- request accounting and drain ------------------------------------------------------------
    def _tracked(self, endpoint: str, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.in_flight += 1
            self.metrics.in_flight.set(self.in_flight)
            code = "500"
            try:
                response = await handler(request)
                code = str(response.status)
                return response
            except EngineError as error:
                code = str(error.status)
                return _error(error.status, str(error))
            except (asyncio.CancelledError, ConnectionResetError):
                # Cancelled because the client left (RUNNER_OPTIONS), or a stream's write found it
                # gone: its engine work was cancelled with it. A cancellation with the client still
                # there is the server's shutdown, not an abandoned request.
                if _client_left(request):
                    code = "499"  # nginx's "client closed request": no answer was sent
                    self.metrics.abandoned.labels(endpoint=endpoint).inc()
                    log.debug("%s %s abandoned by its client: work stopped", request.method, request.path)
                raise
            finally:
                self.in_flight -= 1
                self.metrics.in_flight.set(self.in_flight)
                self.metrics.requests.labels(endpoint=endpoint, code=code).inc()

        return wrapped

    async def drain(self, timeout: float, server: web.Server | None = None) -> bool:
        """Stop being Ready and close every connection of ``server`` as soon as it is idle, serving
        each request meanwhile with ``Connection: close``; True when no connection (nor request)
        was left before ``timeout``. Without ``server`` (an app under a test server), waits for the
        requests in flight only."""
        self.draining = True
        self.metrics.ready.set(0)
        await self._stop_queue_poll()
        open_now = len(server.connections) if server is not None else 0
        log.info("draining in_flight=%d connections=%d timeout_s=%.1f", self.in_flight, open_now, timeout)
        deadline = time.monotonic() + timeout
        closing: dict[RequestHandler, asyncio.Task[None]] = {}
        first_seen: dict[RequestHandler, float] = {}
        while True:
            now = time.monotonic()
            left = server.connections if server is not None else []
            for conn in left:
                if conn in closing or conn.transport is None:
                    continue
                seen = first_seen.setdefault(conn, now)
                known = self._connections.get(conn.transport)
                if known is None and now - seen < _NEW_CONNECTION_GRACE_S:
                    continue  # accepted, no request yet: its first one may be on the way
                if known is not None and (known.busy or now - known.idle_since < _DRAIN_IDLE_CLOSE_S):
                    continue  # busy (it closes after its response) or idle only since just now
                if _input_pending(conn.transport):
                    continue  # a request's bytes arrived and await the event loop: serve it first
                # aiohttp's own graceful close (what AppRunner.cleanup does to every connection):
                # close() ends an idle connection's wait for a request, or marks a busy one to close
                # after its response; shutdown() then waits for that response and closes the socket.
                conn.close()
                closing[conn] = asyncio.create_task(conn.shutdown(max(0.0, deadline - now)))
            if not left and self.in_flight == 0:
                await asyncio.gather(*closing.values())
                return True
            if now >= deadline:
                log.warning(
                    "drain timeout: %d requests in flight, %d connections open", self.in_flight, len(left)
                )
                for task in closing.values():
                    task.cancel()
                await asyncio.gather(*closing.values(), return_exceptions=True)
                return False
            await asyncio.sleep(_DRAIN_POLL_S)

    # --- OpenAI relay ------------------------------------------------------------------------------
    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        reply = await self.engine.call(request.path, body)
        return await _relay(request, reply)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        return await _relay(request, await self.engine.models())

    # --- GRM scoring ---------------------------------------------------------------------------------
    def _score_request(self, body: dict[str, Any]) -> ScoreRequest:
        s = self.config.scoring
        query, responses = body.get("query"), body.get("responses")
        if not isinstance(query, str) or not query:
            raise EngineError("query must be a non-empty string", 400)
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise EngineError("responses must be a list of strings", 400)
        if not 2 <= len(responses) <= s.max_responses:
            raise EngineError(f"need 2 to {s.max_responses} responses, got {len(responses)}", 400)
        samples = body.get("samples", self.samples_budget)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise EngineError("samples must be a positive integer", 400)
        principles = body.get("principles")
        if principles is not None and not isinstance(principles, str):
            raise EngineError("principles must be a string", 400)
        sampling = body.get("sampling", s.sampling)
        if sampling not in ("shuffled", "shared-prefill"):
            raise EngineError("sampling must be shuffled or shared-prefill", 400)
        early_exit = body.get("early_exit", s.early_exit)
        if early_exit not in ("exact", "off", True, False):
            raise EngineError("early_exit must be exact or off", 400)
        seed = body.get("seed")
        if seed is None:
            self._seed += 1
            seed = self._seed
        elif not isinstance(seed, int):
            raise EngineError("seed must be an integer", 400)
        return ScoreRequest(
            query=query,
            responses=tuple(responses),
            samples=min(samples, self.samples_budget),
            principles=principles,
            sampling=sampling,
            early_exit=early_exit in ("exact", True),
            samples_per_round=s.samples_per_round,
            seed=seed,
        )

    async def _score(self, request: web.Request) -> web.StreamResponse:
        if SHADOW_HEADER in request.headers:
            return await self._shadow_score(request)
        started = time.monotonic()
        try:
            score_request = self._score_request(await _json_body(request))
        except EngineError:
            self.metrics.score_requests.labels(outcome="rejected").inc()
            raise
        s = self.config.scoring
        shed = shed_samples(score_request.samples, s.shed_floor, self.queue_waiting())
        if shed:
            floor = score_request.samples - shed  # = shed_floor
            score_request = dataclasses.replace(score_request, samples=floor, shed=shed)
            self.metrics.requests_shed.inc()
            self.metrics.samples_shed.inc(shed)

        async def sampler(prompts: list[str], n: int) -> list[str]:
            return await self.engine.sample(prompts, n, max_tokens=s.max_tokens, temperature=s.temperature)

        try:
            result = await score(score_request, sampler)
        except EngineError:
            self.metrics.score_requests.labels(outcome="error").inc()
            raise
        m = self.metrics
        m.score_requests.labels(outcome="ok").inc()
        m.samples.observe(result.samples_used)
        m.parse_failures.inc(result.parse_failures)
        if result.early_exit:
            m.early_exits.inc()
            m.samples_saved.inc(score_request.samples - result.samples_used)
        m.latency.observe(time.monotonic() - started)
        self.shadow.offer(score_request, result)  # O(1), never awaits: the user is not delayed
        return web.json_response(result.as_json())

    async def _shadow_score(self, request: web.Request) -> web.StreamResponse:
        """A score another variant's worker shadows here (this worker is its reference): never
        shed, refused while the engine has a queue, counted apart from demand."""
        if self.queue_waiting():
            return busy_response()
        score_request = self._score_request(await _json_body(request))
        s = self.config.scoring

        async def sampler(prompts: list[str], n: int) -> list[str]:
            return await self.engine.sample(prompts, n, max_tokens=s.max_tokens, temperature=s.temperature)

        result = await score(score_request, sampler)
        self.shadow.served(result)
        return web.json_response(result.as_json())

    # --- health, metrics, admin ---------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok", "draining": self.draining})

    async def _ready(self, request: web.Request) -> web.StreamResponse:
        ready = not self.draining and await self.engine.ready()
        self.metrics.ready.set(1 if ready else 0)
        reason = "ready" if ready else "draining" if self.draining else "engine not ready"
        return web.json_response({"ready": ready, "reason": reason}, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        try:
            engine_text = await self.engine.metrics_text()
        except EngineError as error:
            log.debug("engine metrics unavailable: %s", error)
            engine_text = ""
        self.metrics.ready.set(1 if (not self.draining and await self.engine.ready()) else 0)
        text = engine_text.rstrip("\n") + "\n" if engine_text else ""
        text += self.metrics.render()
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    @web.middleware
    async def _admin_authorized(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every admin request carries ``Authorization: Bearer <token>``, else 401 (logged
        without what was sent). ``hmac.compare_digest``: the comparison takes as long whatever
        the prefix matched, so timing tells nothing of the token."""
        if self._admin_token is None:
            if self._admin_insecure:
                return await handler(request)
            reason = f"the worker has no admin token ({ADMIN_TOKEN_ENV}); the admin API is off"
        else:
            scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                credential.strip().encode(), self._admin_token
            ):
                return await handler(request)
            reason = "missing or wrong bearer token"
        self.metrics.admin_rejected.inc()
        log.warning(
            "admin request %s %s from %s refused: %s", request.method, request.path, request.remote, reason
        )
        return _error(401, reason, {"WWW-Authenticate": 'Bearer realm="grm-worker-admin"'})

    async def _admin_samples(self, request: web.Request) -> web.StreamResponse:
        s = self.config.scoring
        if request.method == "POST":
            body = await request.json() if request.can_read_body else {}
            value = body.get("samples") if isinstance(body, dict) else None
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or not s.samples_min <= value <= s.samples_max
            ):
                return _error(400, f"samples must be an integer within [{s.samples_min}, {s.samples_max}]")
            if value != self.samples_budget:
                log.info("sample budget %d -> %d", self.samples_budget, value)
            self.samples_budget = value
            self.metrics.budget.set(value)
        elif request.method != "GET":
            return _error(405, "use GET or POST")
        return web.json_response({"samples": self.samples_budget, "min": s.samples_min, "max": s.samples_max})

    async def _admin_sim(self, request: web.Request) -> web.StreamResponse:
        from grm_worker.engines.sim import SimEngine

        engine = self.engine
        if not isinstance(engine, SimEngine):
            return _error(404, "fault injection exists only on the sim engine")
        if request.method == "POST":
            body = await request.json() if request.can_read_body else {}
            if not isinstance(body, dict):
                return _error(400, "body must be a JSON object")
            try:
                if "slowdown" in body:
                    slowdown = float(body["slowdown"])
                    if slowdown <= 0:
                        raise ValueError("slowdown must be > 0")
                    engine.faults.slowdown = slowdown
                if "error_rate" in body:
                    rate = float(body["error_rate"])
                    if not 0.0 <= rate <= 1.0:
                        raise ValueError("error_rate must be within [0, 1]")
                    engine.faults.error_rate = rate
            except (TypeError, ValueError) as error:
                return _error(400, str(error))
            if body.get("crash"):
                engine.crash(str(body.get("reason") or "injected crash"))
            log.info("sim faults %s", engine.faults)
        f = engine.faults
        return web.json_response({"slowdown": f.slowdown, "error_rate": f.error_rate, "crashed": f.crashed})


def engine_app(engine: Engine) -> web.Application:
    """The engine alone over HTTP, as vLLM's own server would expose it (no scoring, no front
    metrics): the baseline of the front's added-latency benchmark and a stand-in vLLM child."""

    async def openai(request: web.Request) -> web.StreamResponse:
        try:
            body = await _json_body(request)
        except EngineError as error:
            return _error(error.status, str(error))
        return await _relay(request, await engine.call(request.path, body))

    async def models(request: web.Request) -> web.StreamResponse:
        return await _relay(request, await engine.models())

    async def health(request: web.Request) -> web.StreamResponse:
        return web.Response(status=200 if await engine.ready() else 503)

    async def metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(text=await engine.metrics_text(), content_type="text/plain", charset="utf-8")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/completions", openai)
    app.router.add_post("/v1/chat/completions", openai)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app
