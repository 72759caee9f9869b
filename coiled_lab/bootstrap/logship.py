"""Ship a VM's output to its CloudWatch Logs stream, in batches, from a background thread.

Runs on the VM (see :mod:`coiled_lab.bootstrap.vm`) under the image's own ``python3``,
before anything is installed: standard library only. :class:`CloudWatchLogs` is a small
client for the two calls the shipper makes (``CreateLogStream``, ``PutLogEvents``: JSON
protocol, Signature Version 4 with :mod:`hmac`/:mod:`hashlib`); it has no credentials of
its own: :class:`InstanceRoleCredentials` reads the instance role's from the metadata
service (IMDSv2) and fetches them again before they expire. Requests go through the
proxy that ``https_proxy``/``http_proxy`` name unless ``no_proxy`` covers the endpoint
(urllib's rules), else directly. The shipper takes any client with those two methods and
an ``exceptions`` namespace naming the two errors it handles (a boto3 ``logs`` client too).

Delivery, while the VM lives: every line is sent once, in the order written, unless the
buffer overflows. The buffer is bounded in lines *and* bytes, so an outage costs the
oldest lines beyond that cap (counted, and reported in the stream by a note once it
recovers), never the VM's memory. A batch respects PutLogEvents' limits (events in time
order, at most 10,000 events or ~1 MB); a batch that fails goes back to the front of
the buffer and is retried, after the client's own retries, with a growing, jittered pause
(so a thousand VMs coming back from one outage do not retry in step). The one case that
can repeat lines: CloudWatch accepted a batch but the answer was lost on the way back;
PutLogEvents has no idempotency key (sequence tokens are gone), so that batch is sent
again (at least once rather than lost).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from typing import Any, Callable, NamedTuple, Optional

# PutLogEvents limits: 10,000 events, 1,048,576 bytes counting 26 bytes per event, and
# 256 KiB per event.
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD


def utc_stamps(formatter: logging.Formatter) -> logging.Formatter:
    """``formatter`` with its times in UTC, marked ``Z``, in distributed's shape otherwise
    (``2026-11-23 19:49:52,123Z``): the stamp of every line a VM's bootstrap and the dask
    processes coiled-lab starts write (:mod:`.utclog`), so that no reader has to guess
    the zone of the machine that wrote it (:mod:`coiled_lab.utc`). A formatter given its own
    ``datefmt`` keeps it, in UTC."""
    formatter.converter = time.gmtime
    formatter.default_msec_format = "%s,%03dZ"
    return formatter


class LogShipper:
    """A thread that sends queued lines to one log stream every ``interval`` seconds.

    ``client_factory`` builds the CloudWatch Logs client when the thread first needs it
    (on a VM a :class:`CloudWatchLogs`), so lines can be queued before it can be made.
    """

    def __init__(
        self,
        client_factory: Callable[[], Any],
        group: str,
        stream: str,
        max_lines: int = 20_000,
        max_bytes: int = 16 * 1024 * 1024,
        interval: float = 1.0,
        max_backoff: float = 30.0,
    ):
        self.group = group
        self.stream = stream
        self.interval = interval
        self.max_backoff = max_backoff
        self._client_factory = client_factory
        self._client: Any = None
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._queue: deque[tuple[int, str]] = deque()
        self._bytes = 0  # what the queued messages weigh, as PutLogEvents counts them
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._deadline: Optional[float] = None  # set by close(): stop once sent, or at this time
        self._stream_ready = False
        self._thread: Optional[threading.Thread] = None
        self._last_ms = 0
        self.dropped = 0  # since the last note about dropped lines
        self.dropped_total = 0
        self.sent = 0
        self.failures = 0  # batches that could not be sent (then retried)

    # -- producer side (any thread) ------------------------------------------------------
    def write(self, message: str, timestamp: Optional[float] = None) -> None:
        """Queue one line; never blocks. When full (lines or bytes), the oldest queued
        lines are dropped to make room."""
        ms = int((time.time() if timestamp is None else timestamp) * 1000)
        data = message.rstrip("\n").encode("utf-8", "replace")[:MAX_EVENT_BYTES].decode("utf-8", "ignore")
        with self._lock:
            # CloudWatch wants each batch in time order; a clock step backwards must not
            # reorder lines, so time stamps never decrease.
            ms = max(ms, self._last_ms)
            self._last_ms = ms
            data = data or " "
            cost = _cost(data)
            while self._queue and (len(self._queue) >= self.max_lines or self._bytes + cost > self.max_bytes):
                self._bytes -= _cost(self._queue.popleft()[1])
                self._count_dropped(1)
            self._queue.append((ms, data))
            self._bytes += cost

    def _count_dropped(self, lines: int) -> None:
        self.dropped += lines
        self.dropped_total += lines

    def start(self) -> "LogShipper":
        self._thread = threading.Thread(target=self._run, name="coiled-lab-logship", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (trying for at most ``timeout`` seconds), then stop."""
        self._deadline = time.monotonic() + timeout
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + self.max_backoff)

    # -- consumer side (the shipping thread) ---------------------------------------------
    def _take_batch(self) -> tuple[list[dict[str, Any]], int]:
        """The next batch, and how many dropped lines its first event reports (0: none)."""
        batch: list[dict[str, Any]] = []
        size = 0
        with self._lock:
            reported = self.dropped
            if reported:
                note = f"coiled-lab: {reported} log lines were dropped while CloudWatch was unreachable"
                first = self._queue[0][0] if self._queue else self._last_ms
                batch.append({"timestamp": first, "message": note})
                size += len(note) + EVENT_OVERHEAD
                self.dropped = 0
            while self._queue and len(batch) < MAX_BATCH_EVENTS:
                ms, message = self._queue[0]
                cost = _cost(message)
                if batch and (size + cost > MAX_BATCH_BYTES or ms - batch[0]["timestamp"] > 23 * 3600 * 1000):
                    break
                self._queue.popleft()
                self._bytes -= cost
                batch.append({"timestamp": ms, "message": message})
                size += cost
        return batch, reported

    def _put_back(self, batch: list[dict[str, Any]], reported: int) -> None:
        """A batch that could not be sent goes back to the front of the queue, as far as
        there is room (the rest counts as dropped, like the note about earlier drops)."""
        lines = batch[1:] if reported else batch
        with self._lock:
            room, weight, keep = self.max_lines - len(self._queue), self._bytes, 0
            # The newest lines of the batch come back first: older ones are dropped first.
            for event in reversed(lines):
                cost = _cost(event["message"])
                if keep >= room or weight + cost > self.max_bytes:
                    break
                weight += cost
                keep += 1
            kept = lines[len(lines) - keep:]
            self._queue.extendleft((e["timestamp"], e["message"]) for e in reversed(kept))
            self._bytes = weight
            self.dropped += reported  # the note goes again, with the count it had
            self._count_dropped(len(lines) - keep)

    def _send(self, batch: list[dict[str, Any]]) -> None:
        if self._client is None:
            self._client = self._client_factory()
        if not self._stream_ready:
            try:
                self._client.create_log_stream(logGroupName=self.group, logStreamName=self.stream)
            except self._client.exceptions.ResourceAlreadyExistsException:
                pass
            self._stream_ready = True
        try:
            self._client.put_log_events(logGroupName=self.group, logStreamName=self.stream, logEvents=batch)
        except self._client.exceptions.ResourceNotFoundException:
            self._stream_ready = False  # the stream (or group) went away: made again on the retry
            raise
        self.sent += len(batch)

    def _run(self) -> None:
        backoff = 0.0
        while True:
            batch, reported = self._take_batch()
            if batch:
                try:
                    self._send(batch)
                    backoff = 0.0
                    continue  # more may be queued: send it without waiting
                except Exception as exc:  # noqa: BLE001 - no network yet, a role not yet usable, ...
                    self._put_back(batch, reported)
                    self.failures += 1
                    if self._deadline is not None and time.monotonic() >= self._deadline:
                        return
                    backoff = min(max(2 * backoff, 0.5), self.max_backoff)
                    pause = random.uniform(backoff / 2, backoff)
                    print(f"coiled-lab: log shipping failed ({type(exc).__name__}: {exc}); retrying in {pause:.2g}s",
                          flush=True)
                    time.sleep(pause)
                    continue
            if self._deadline is not None:
                return
            self._wake.wait(self.interval)
            self._wake.clear()


def _cost(message: str) -> int:
    """What one event weighs against PutLogEvents' batch limit (and the buffer's cap)."""
    return len(message.encode()) + EVENT_OVERHEAD


# -- a CloudWatch Logs client of the standard library -------------------------------------

class Credentials(NamedTuple):
    access_key: str
    secret_key: str
    token: Optional[str] = None
    expires: Optional[float] = None  # epoch seconds; None: they do not expire


class InstanceRoleCredentials:
    """The instance role's temporary credentials from the metadata service (``get`` reads
    ``/latest/meta-data/<path>``: :meth:`coiled_lab.bootstrap.vm.Metadata.get`), fetched
    again ten minutes before their ``Expiration``. A failed refresh keeps the current ones
    while they are still valid."""

    def __init__(self, get: Callable[[str], Optional[str]]):
        self._get = get
        self._current: Optional[Credentials] = None
        self._lock = threading.Lock()

    def __call__(self) -> Credentials:
        with self._lock:
            current, now = self._current, time.time()
            if current is None or (current.expires or now + 601) - now <= 600:
                try:
                    role = (self._get("iam/security-credentials/") or "").split()
                    if not role:
                        raise PermissionError("this instance has no IAM role: nothing can sign its requests")
                    answer = json.loads(self._get(f"iam/security-credentials/{role[0]}") or "{}")
                    expires = answer.get("Expiration")
                    self._current = current = Credentials(
                        answer["AccessKeyId"], answer["SecretAccessKey"], answer.get("Token"),
                        datetime.datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp() if expires else None)
                except Exception:
                    if current is None or (current.expires or now + 6) <= now + 5:
                        raise
            return current


def sigv4_headers(url: str, headers: dict[str, str], body: bytes, credentials: Credentials, region: str,
                  service: str, now: Optional[float] = None, method: str = "POST",
                  payload: Optional[str] = None) -> dict[str, str]:
    """``headers`` of a ``method`` request to ``url`` (no query) plus ``Host``,
    ``X-Amz-Date``, the session token and ``Authorization``: AWS Signature Version 4, every
    header signed. ``payload`` replaces the body's sha256 (S3's ``UNSIGNED-PAYLOAD``)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    parts = urllib.parse.urlsplit(url)
    signed = {**headers, "Host": parts.netloc, "X-Amz-Date": stamp}
    if credentials.token:
        signed["X-Amz-Security-Token"] = credentials.token
    canonical = sorted((k.lower(), " ".join(str(v).split())) for k, v in signed.items())
    names = ";".join(k for k, _ in canonical)
    request = "\n".join([method, urllib.parse.quote(parts.path or "/"), "", *(f"{k}:{v}" for k, v in canonical), "",
                         names, payload or hashlib.sha256(body).hexdigest()])
    scope = f"{stamp[:8]}/{region}/{service}/aws4_request"
    key = ("AWS4" + credentials.secret_key).encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    text = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"
    signature = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    signed["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                               f"SignedHeaders={names}, Signature={signature}")
    return signed


class CloudWatchLogsError(Exception):
    """An error answer of CloudWatch Logs; ``code`` is its type (``ThrottlingException``)."""

    def __init__(self, code: str, message: str = "", status: int = 0):
        super().__init__(f"{code}: {message}")
        self.code, self.status = code, status


class ResourceAlreadyExistsException(CloudWatchLogsError):
    pass


class ResourceNotFoundException(CloudWatchLogsError):
    pass


class CloudWatchLogs:
    """The CloudWatch Logs calls :class:`LogShipper` makes (JSON protocol), with urllib.

    ``credentials`` returns the :class:`Credentials` to sign with (on a VM:
    :class:`InstanceRoleCredentials`). The endpoint is ``endpoint``, else
    ``AWS_ENDPOINT_URL_LOGS``, else ``AWS_ENDPOINT_URL``, else ``https://logs.<region>.amazonaws.com``.
    Throttling, 5xx answers and network errors are tried ``max_attempts`` times in all,
    with jittered exponential pauses of at most 20 s, as botocore's standard retry mode does.
    """

    class exceptions:  # what a boto3 client names so: LogShipper catches these
        ResourceAlreadyExistsException = ResourceAlreadyExistsException
        ResourceNotFoundException = ResourceNotFoundException

    def __init__(self, region: str, credentials: Callable[[], Credentials], endpoint: Optional[str] = None,
                 max_attempts: int = 10, timeout: float = 30.0):
        self.region, self.credentials, self.max_attempts, self.timeout = region, credentials, max_attempts, timeout
        self._opener = urllib.request.build_opener()  # the proxy variables as they are now
        self.url = (endpoint or os.environ.get("AWS_ENDPOINT_URL_LOGS") or os.environ.get("AWS_ENDPOINT_URL")
                    or f"https://logs.{region}.amazonaws.com").rstrip("/") + "/"

    def create_log_stream(self, logGroupName: str, logStreamName: str) -> dict[str, Any]:
        return self.call("CreateLogStream", {"logGroupName": logGroupName, "logStreamName": logStreamName})

    def put_log_events(self, logGroupName: str, logStreamName: str, logEvents: list) -> dict[str, Any]:
        return self.call("PutLogEvents", {"logGroupName": logGroupName, "logStreamName": logStreamName,
                                          "logEvents": logEvents})

    def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps(params).encode()
        for attempt in range(1, self.max_attempts + 1):
            headers = sigv4_headers(self.url, {"Content-Type": "application/x-amz-json-1.1",
                                               "X-Amz-Target": f"Logs_20140328.{action}"},
                                    body, self.credentials(), self.region, "logs")
            try:
                with self._opener.open(urllib.request.Request(self.url, body, headers), timeout=self.timeout) as response:
                    return json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as exc:
                try:
                    answer = json.loads(exc.read() or b"{}")
                except ValueError:  # a proxy's page, not AWS's answer
                    answer = {}
                code = (answer.get("__type") or exc.headers.get("x-amzn-ErrorType") or str(exc.code))
                code = code.split(":")[0].split("#")[-1]
                error = {"ResourceAlreadyExistsException": ResourceAlreadyExistsException,
                         "ResourceNotFoundException": ResourceNotFoundException}.get(code, CloudWatchLogsError)
                failure: Exception = error(code, answer.get("message") or answer.get("Message") or "", exc.code)
                if (exc.code < 500 and exc.code != 429 and code not in _RETRIED) or attempt == self.max_attempts:
                    raise failure from None
            except (OSError, http.client.HTTPException):
                if attempt == self.max_attempts:
                    raise
            time.sleep(random.uniform(0, min(20.0, 2.0 ** attempt / 2)))
        raise AssertionError("unreachable")


_RETRIED = {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
