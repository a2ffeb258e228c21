"""What the dummy ECS and Batch share: request validation, faults, local processes, the clock."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from types import SimpleNamespace
from typing import Any

import botocore.exceptions
import botocore.session
from botocore.exceptions import ClientError
from botocore.validate import validate_parameters

ACCOUNT = "123456789012"
TICK = 0.02  # seconds between state updates: well below any poll interval


def worker_chunk(argv: list[str], env: dict[str, str]) -> int | None:
    """The chunk (or worker) a poolparty_raster worker command will run (for fault selectors)."""
    if "--env" in argv:
        i = argv.index("--env")
        offset = int(argv[argv.index("--offset") + 1]) if "--offset" in argv else 0
        value = env.get(argv[i + 1], "")
        return int(value) + offset if value.isdigit() else None
    return int(argv[-1]) if argv and argv[-1].isdigit() else None


class Service:
    """A dummy AWS service client. Subclasses keep their units (tasks or jobs) as dicts with
    ``phase`` queued -> running -> done, and say how a unit ends (``_ended``)."""

    service = ""
    throttle_code = "ThrottlingException"

    def __init__(self, directory: str, slots: int = 8, region: str = "us-east-1") -> None:
        self.directory, self.slots = str(directory), slots
        os.makedirs(self.directory, exist_ok=True)
        self.meta = SimpleNamespace(region_name=region)
        self._model = botocore.session.get_session().get_service_model(self.service)
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.peak_active = 0  # the most tasks or jobs queued or running at once
        self._lock = threading.RLock()
        self._errors: dict[str, list[tuple[str, str, int] | str]] = {}
        self._lost_replies: dict[str, list[str]] = {}
        self._stops: list[dict[str, Any]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._tick_loop, daemon=True, name=f"dummy-{self.service}")
        self._thread.start()

    # -- requests ----------------------------------------------------------------------
    def _request(self, operation: str, params: dict[str, Any]) -> None:
        """Record, fail if told to, and validate a call as botocore would."""
        op = self._model.operation_model(operation)
        with self._lock:
            self.calls.append((operation, json.loads(json.dumps(params, default=str))))
            if self._errors.get(operation):
                fault = self._errors[operation].pop(0)
                if isinstance(fault, str):
                    raise self._transport_error(fault)
                code, message, status = fault
                raise self._error(code, message, operation, status)
        validate_parameters(params, op.input_shape)  # raises ParamValidationError

    def _reply(self, operation: str, answer: dict[str, Any]) -> dict[str, Any]:
        """The answer, or (an injected fault) a transport error after the service acted."""
        with self._lock:
            if self._lost_replies.get(operation):
                raise self._transport_error(self._lost_replies[operation].pop(0))
        return answer

    def _transport_error(self, name: str) -> Exception:
        """botocore's exception of that name, as its HTTP layer raises it."""
        url = f"https://{self.service}.{self.meta.region_name}.amazonaws.com/"
        return getattr(botocore.exceptions, name)(endpoint_url=url, proxy_url="http://proxy:3128/",
                                                  error="Connection reset by peer")

    def _error(self, code: str, message: str, operation: str, status: int = 400,
               **fields: Any) -> ClientError:
        """ClientError as botocore raises it; ``fields`` are the error's modeled members
        (ConflictException's resourceIds), which botocore puts beside "Error"."""
        return ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}, **fields}, operation)

    def calls_to(self, operation: str) -> list[dict[str, Any]]:
        return [params for op, params in self.calls if op == operation]

    # -- faults ------------------------------------------------------------------------
    def inject_throttle(self, operation: str, times: int = 1) -> None:
        """The next ``times`` calls of ``operation`` (e.g. "RunTask", "SubmitJob") are throttled."""
        self.inject_error(operation, self.throttle_code, "Rate exceeded", times)

    def inject_error(self, operation: str, code: str, message: str = "injected", times: int = 1,
                     status: int = 400) -> None:
        """The next ``times`` calls of ``operation`` fail with ClientError ``code`` (e.g.
        "AccessDeniedException", "ClusterNotFoundException"; status 500 for ServerException)."""
        with self._lock:
            self._errors.setdefault(operation, []).extend([(code, message, status)] * times)

    def inject_lost_reply(self, operation: str, times: int = 1, error: str = "ReadTimeoutError") -> None:
        """The next ``times`` calls of ``operation`` act (a task starts, a job is created), but
        their answer is lost: botocore's ``error`` is raised instead (ReadTimeoutError,
        ConnectionClosedError, ResponseStreamingError, SSLError, HTTPClientError...)."""
        with self._lock:
            self._lost_replies.setdefault(operation, []).extend([error] * times)

    def inject_transport_error(self, operation: str, error: str = "EndpointConnectionError",
                               times: int = 1) -> None:
        """The next ``times`` calls of ``operation`` fail before the service sees them, with
        botocore's ``error`` (EndpointConnectionError, ProxyConnectionError, SSLError...)."""
        with self._lock:
            self._errors.setdefault(operation, []).extend([error] * times)

    def inject_stop(self, chunk: int | None = None, times: int = 1, after: float = 0.0,
                    **how: Any) -> None:
        """The next ``times`` runs of ``chunk`` (any when None) are killed ``after`` seconds in.
        ``how``: ECS stop_code, stopped_reason, exit_code (None: never started), reason (the
        container's, e.g. "OutOfMemoryError: Container killed due to memory usage"); Batch
        status_reason, exit_code, reason."""
        with self._lock:
            self._stops.append({"chunk": chunk, "times": times, "after": after, "how": how})

    def _note_active(self) -> None:
        self.peak_active = max(self.peak_active, sum(1 for u in self._units() if u["phase"] != "done"))

    def _take_stop(self, chunk: int | None) -> dict[str, Any] | None:
        for fault in self._stops:
            if fault["times"] > 0 and fault["chunk"] in (None, chunk):
                fault["times"] -= 1
                return fault
        return None

    # -- processes ---------------------------------------------------------------------
    def _spawn(self, unit: dict[str, Any]) -> None:
        unit["started"] = time.time()
        unit["fault"] = self._take_stop(worker_chunk(unit["argv"], unit["env"]))
        if unit["fault"] is not None and unit["fault"]["after"] == 0:
            unit["proc"] = None  # stopped before its command ran (a failed start, a quick kill)
            return
        env = dict(os.environ)
        env.update(unit["env"])
        log = open(os.path.join(self.directory, f"{unit['name']}.log"), "ab")
        try:
            unit["proc"] = subprocess.Popen(unit["argv"], env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        except OSError as exc:
            log.write(f"{exc}\n".encode())
            unit["proc"] = None
            self._ended(unit, 127, None)
        finally:
            log.close()

    @staticmethod
    def _kill(unit: dict[str, Any]) -> None:
        proc = unit.get("proc")
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def _tick_loop(self) -> None:
        while not self._closed.wait(TICK):
            with self._lock:
                self._tick()

    def _tick(self) -> None:
        for unit in [u for u in self._units() if u["phase"] == "running"]:
            fault = unit.get("fault")
            if fault is not None and time.time() - unit["started"] >= fault["after"]:
                self._kill(unit)
                self._ended(unit, fault["how"].get("exit_code", 137), fault["how"])
            elif unit["proc"] is not None and unit["proc"].poll() is not None:
                code = unit["proc"].returncode
                self._ended(unit, code if code >= 0 else 128 - code, None)  # as docker reports
        free = self.slots - sum(1 for u in self._units() if u["phase"] == "running")
        for unit in [u for u in self._units() if u["phase"] == "queued"][:max(free, 0)]:
            unit["phase"] = "running"
            self._spawn(unit)

    def close(self) -> None:
        """Stop the clock and kill every process still running."""
        self._closed.set()
        self._thread.join(5)
        with self._lock:
            for unit in self._units():
                self._kill(unit)

    def _units(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _ended(self, unit: dict[str, Any], code: int | None, how: dict[str, Any] | None) -> None:
        raise NotImplementedError
