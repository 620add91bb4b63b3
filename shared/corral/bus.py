"""Connecting to NATS and declaring JetStream resources.

nats-py's defaults suit short scripts, not services, so corral overrides them:

* `max_reconnect_attempts = -1` (nats-py: 60) - a service reconnects forever; giving up after
  two minutes of a NATS rolling restart turns a blip into an outage.
* `reconnect_time_wait = 1 s` (nats-py: 2 s) - per-server wait between attempts; nats-py
  rotates through the server list, so a cluster is retried quickly without spinning.
* `ping_interval = 10 s`, `max_outstanding_pings = 3` (nats-py: 120 s and 2) - a half-open
  TCP connection (peer gone without a FIN, e.g. a killed pod) is noticed in ~30 s, not 4 min.
* `connect_timeout = 5 s` (nats-py: 2 s) - TLS handshakes to a remote cluster can exceed 2 s.

The first connection is retried a bounded number of times (`connect_attempts`), logging how
many attempts are left, so a service started before its NATS server waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from corral.errors import ConfigError
from corral.subjects import Subjects

__all__ = [
    "BusSettings",
    "ConsumerSpec",
    "KVSpec",
    "StreamSpec",
    "connect",
    "ensure_consumer",
    "ensure_kv",
    "ensure_stream",
    "events_stream_spec",
    "kv_values",
    "publish_durable",
    "request",
    "round_trip",
]

log = logging.getLogger("corral.bus")

DEFAULT_URL = "nats://127.0.0.1:4222"
_STREAM_NAME_IN_USE = 10058  # JetStream: "stream name already in use with a different configuration"


class BusSettings(msgspec.Struct, kw_only=True, frozen=True):
    """How to reach NATS. Built from the environment with `from_env()`."""

    servers: list[str] = msgspec.field(default_factory=lambda: [DEFAULT_URL])
    name: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    connect_timeout: float = 5.0
    connect_attempts: int = 30
    reconnect_time_wait: float = 1.0
    ping_interval: float = 10.0
    max_outstanding_pings: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> BusSettings:
        """Read `NATS_URL` (comma-separated servers), `NATS_USER`, `NATS_PASSWORD`, `NATS_TOKEN`,
        `NATS_NKEY_SEED` (a seed file), `NATS_CREDS`, `NATS_TLS_CA`, `NATS_TLS_CERT`, `NATS_TLS_KEY`."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if url := env.get("NATS_URL"):
            values["servers"] = [u.strip() for u in url.split(",") if u.strip()]
        for field, var in (
            ("user", "NATS_USER"),
            ("password", "NATS_PASSWORD"),
            ("token", "NATS_TOKEN"),
            ("nkey_seed_file", "NATS_NKEY_SEED"),
            ("creds_file", "NATS_CREDS"),
            ("tls_ca", "NATS_TLS_CA"),
            ("tls_cert", "NATS_TLS_CERT"),
            ("tls_key", "NATS_TLS_KEY"),
        ):
            if value := env.get(var):
                values[field] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca)
        if self.tls_cert:
            if not self.tls_key:
                raise ConfigError(
                    "NATS_TLS_CERT is set without NATS_TLS_KEY: a client certificate needs its key"
                )
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context


async def connect(
    settings: BusSettings,
    *,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
) -> Client:
    """Connect with service-grade defaults; retries the first connection, then reconnects forever."""
    name = settings.name or "corral"

    async def disconnected() -> None:
        if not (nc.is_closed or nc.is_draining):
            log.warning("disconnected from NATS; reconnecting", extra={"client": name})

    async def reconnected() -> None:
        log.info("reconnected to NATS at %s", nc.connected_url.netloc if nc.connected_url else "?")
        if on_reconnect is not None:
            await on_reconnect()

    last_error: list[Exception] = []

    async def error(exc: Exception) -> None:
        if nc.is_connected or nc.is_reconnecting:
            log.warning("NATS client error: %s", exc)
        else:  # a failed first attempt: the retry loop below reports it
            last_error[:] = [exc]

    options = _client_options(settings)
    options.update(disconnected_cb=disconnected, reconnected_cb=reconnected, error_cb=error, name=name)
    attempts = max(1, settings.connect_attempts)
    for attempt in range(1, attempts + 1):
        nc = Client()
        try:
            # nats-py retries a failing first connection forever when max_reconnect_attempts <= 0,
            # so each of our attempts allows one retry per server; we count and log attempts.
            await nc.connect(**{**options, "max_reconnect_attempts": 1}, allow_reconnect=False)
        except (TimeoutError, OSError, nats.errors.Error) as failure:
            exc = last_error[0] if last_error else failure
            left = attempts - attempt
            if left == 0:
                raise ConnectionError(
                    f"could not connect to NATS at {', '.join(settings.servers)} after {attempts} attempts: "
                    f"{exc!r}. Is nats-server running? Set NATS_URL to its address."
                ) from failure
            log.warning("NATS at %s not reachable (%r); %d attempts left", settings.servers, exc, left)
            await asyncio.sleep(min(0.2 * attempt, 2.0))
            continue
        break
    # Now that we are connected, reconnect forever for the life of the client.
    nc.options["allow_reconnect"] = True
    nc.options["max_reconnect_attempts"] = -1
    log.info("connected to NATS at %s", nc.connected_url.netloc if nc.connected_url else settings.servers)
    return nc


def _client_options(settings: BusSettings) -> dict[str, Any]:
    """nats-py connect() keyword arguments: the service-grade defaults plus credentials."""
    options: dict[str, Any] = {
        "servers": settings.servers,
        "connect_timeout": settings.connect_timeout,
        "reconnect_time_wait": settings.reconnect_time_wait,
        "max_reconnect_attempts": -1,
        "ping_interval": settings.ping_interval,
        "max_outstanding_pings": settings.max_outstanding_pings,
        "tls": settings.tls_context(),
    }
    if settings.user:
        options["user"], options["password"] = settings.user, settings.password
    if settings.token:
        options["token"] = settings.token
    if settings.nkey_seed_file:
        options["nkeys_seed"] = settings.nkey_seed_file
    if settings.creds_file:
        options["user_credentials"] = settings.creds_file
    return options


# --- JetStream declarations -----------------------------------------------------------------------


class StreamSpec(msgspec.Struct, kw_only=True, frozen=True):
    name: str
    subjects: list[str]
    retention: str = "limits"  # limits | workqueue | interest
    max_age: float | None = None  # seconds
    max_bytes: int | None = None
    max_msgs: int | None = None
    duplicate_window: float = 120.0
    replicas: int = 1
    discard: str = "old"  # old | new: "new" refuses a publish when the stream is full (backpressure)

    def to_config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=api.RetentionPolicy(self.retention),
            storage=api.StorageType.FILE,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            max_msgs=self.max_msgs,
            duplicate_window=self.duplicate_window,
            num_replicas=self.replicas,
            discard=api.DiscardPolicy(self.discard),
        )


class KVSpec(msgspec.Struct, kw_only=True, frozen=True):
    bucket: str
    history: int = 1
    ttl: float | None = None
    max_value_size: int | None = None
    replicas: int = 1


class ConsumerSpec(msgspec.Struct, kw_only=True, frozen=True):
    """A durable pull consumer; creating it again with changed limits updates it in place."""

    stream: str
    durable: str
    filter_subjects: list[str] = []
    ack_wait: float = 30.0  # seconds before an unacknowledged message is redelivered
    max_deliver: int = -1
    max_ack_pending: int = 1000

    def to_config(self) -> api.ConsumerConfig:
        filters = list(self.filter_subjects)
        return api.ConsumerConfig(
            durable_name=self.durable,
            name=self.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )


EVENTS_MAX_AGE = 7 * 24 * 3600.0  # seconds of event history kept in CORRAL_EVENTS


def events_stream_spec(subjects: Subjects) -> StreamSpec:
    """The one declaration of the CORRAL_EVENTS stream, whichever service creates it first."""
    return StreamSpec(
        name=subjects.events_stream, subjects=subjects.events_stream_subjects, max_age=EVENTS_MAX_AGE
    )


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> api.ConsumerInfo:
    """Create the durable consumer or update it to `spec` (the server's create is create-or-update)."""
    return await js.add_consumer(spec.stream, spec.to_config())


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> api.StreamInfo:
    """Create the stream, or update it to match `spec` when it exists with another config."""
    config = spec.to_config()
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
    return await js.update_stream(config)


async def ensure_kv(js: JetStreamContext, spec: KVSpec) -> Any:
    """Create the KV bucket, or update its limits to match `spec`; returns the KeyValue handle."""
    config = api.KeyValueConfig(
        bucket=spec.bucket,
        history=spec.history,
        ttl=spec.ttl,
        max_value_size=spec.max_value_size,
        storage=api.StorageType.FILE,
        replicas=spec.replicas,
    )
    try:
        return await js.create_key_value(config)
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
    info = await js.stream_info(f"KV_{spec.bucket}")
    stream_config = info.config
    stream_config.max_msgs_per_subject = spec.history
    stream_config.max_age = spec.ttl
    stream_config.max_msg_size = spec.max_value_size
    await js.update_stream(stream_config)
    return await js.key_value(spec.bucket)


async def kv_values(
    js: JetStreamContext, bucket: str, keys: str = ">", kv: KeyValue | None = None
) -> dict[str, bytes]:
    """The current value of every key of `bucket` matching `keys` (a subject pattern); a
    deleted key is left out, and so is every key when the bucket does not exist.

    The keys come from the stream's subjects (one STREAM.INFO), not from nats-py's
    `kv.keys()`, whose watcher can report no keys under load: the server pushed every entry
    before the client handled one. Pass the bucket's `kv` handle where you hold one: opening it
    costs a second STREAM.INFO."""
    try:
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{keys}")
    except nats.js.errors.NotFoundError:
        return {}
    if kv is None:
        kv = await js.key_value(bucket)
    values: dict[str, bytes] = {}
    for subject in sorted(info.state.subjects or {}):
        key = subject.removeprefix(f"$KV.{bucket}.")
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue  # deleted: its subject holds the delete marker
        if entry.value:
            values[key] = entry.value
    return values


async def publish_durable(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    *,
    msg_id: str,
    headers: dict[str, str] | None = None,
    timeout: float = 2.0,
    deadline: float = 30.0,
) -> api.PubAck:
    """Publish to JetStream until acknowledged, retrying with the same `Nats-Msg-Id`.

    A publish in flight while the client reconnects times out without telling us whether
    the server stored it. Retrying with the same message id lets the stream's duplicate
    window drop the copy, so the message is stored exactly once.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    hdrs = {**(headers or {}), "Nats-Msg-Id": msg_id}
    delay = 0.05
    while True:
        try:
            return await js.publish(subject, data, timeout=timeout, headers=hdrs)
        except (
            nats.errors.TimeoutError,
            nats.errors.ConnectionReconnectingError,
            nats.js.errors.NoStreamResponseError,
            nats.js.errors.ServiceUnavailableError,
        ) as exc:
            if loop.time() + delay > give_up:
                raise TimeoutError(
                    f"JetStream did not acknowledge {subject} (Nats-Msg-Id {msg_id}) "
                    f"within {deadline}s: {exc!r}"
                ) from exc
            log.info("publish to %s not acknowledged (%r); retrying with the same message id", subject, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


# Pauses before asking again after "no responders". A responder that has only just subscribed
# may not be known to the server yet: nats-py's `flush()` can overtake its own queued SUB (see
# `round_trip`, which corral's services use), and other clients have the same window. Nothing was
# delivered, so asking again is safe, and a responder that is just starting is found on a retry.
NO_RESPONDERS_RETRY_DELAYS: tuple[float, ...] = (0.005, 0.02, 0.05)


async def request(
    nc: Client,
    subject: str,
    data: bytes = b"",
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
) -> Msg:
    """`nc.request`, asked again a few times within `timeout` when the server says no responders."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for delay in NO_RESPONDERS_RETRY_DELAYS:
        try:
            return await nc.request(subject, data, timeout=deadline - loop.time(), headers=headers)
        except nats.errors.NoRespondersError:
            if loop.time() + delay >= deadline:
                raise
            await asyncio.sleep(delay)
    return await nc.request(subject, data, timeout=max(deadline - loop.time(), 0.001), headers=headers)


async def round_trip(nc: Client, timeout: int = 10) -> None:
    """Return once the server has processed every command sent on `nc` before this call.

    nats-py 2.16's `flush()` writes its PING straight to the socket, ahead of commands still
    queued for its flusher task (such as the SUB of a subscription just made), so its PONG can
    come back before the server has that SUB, and a request sent at once gets "no responders".
    By the time the first PONG is back the flusher has written its queue, so a second PING cannot
    overtake anything sent before this call.
    """
    await nc.flush(timeout)
    await nc.flush(timeout)
