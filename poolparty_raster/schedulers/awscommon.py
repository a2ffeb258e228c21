"""What the ECS and AWS Batch backends share: clients, error sorting, names, tags, the command.

boto3 is imported only when a client is first made (``pip install poolparty_raster[aws]``);
nothing here imports botocore, so the pools can be built and checked without it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from poolparty_raster.errors import (SchedulerError, SchedulerOutputError, SchedulerUnavailableError,
                                     SubmissionRefused)
from poolparty_raster.schedulers.base import JobRecord, Scheduler, SubmitSpec, map_path
from poolparty_raster.node import KEEP_VARIABLE, REEXEC_VARIABLE

# A container that cannot start (image not pulled, EFS not mounted): no resubmission helps...
FATAL_START_ERRORS = ("CannotPullContainerError", "ResourceInitializationError")
# ...unless a rate limit stopped it, which passes: ECR's or Secrets Manager's "ThrottlingException:
# Rate exceeded" under ResourceInitializationError, Docker Hub's "toomanyrequests", HTTP 429.
RATE_LIMITED = re.compile(r"rate exceeded|throttl|toomanyrequests|too many requests|\b429\b|"
                          r"rate limit|request limit exceeded", re.I)
# Error codes that pass by themselves: the request was not acted upon.
THROTTLE_CODES = frozenset({"ThrottlingException", "TooManyRequestsException", "Throttling",
                            "RequestLimitExceeded", "ThrottledException", "SlowDown"})
# 5xx: the service may or may not have acted (a submission is checked before it is repeated).
SERVER_CODES = frozenset({"ServerException", "ServiceUnavailableException", "InternalError",
                          "InternalFailure", "ServiceUnavailable", "InternalServerError"})
# botocore's transport errors, by the names of the classes an error is an instance of (botocore
# may be absent where this is imported). Never sent: repeating the call is safe. Maybe sent
# (a reset connection, an SSL error, a response cut short): the service may have acted.
NOT_SENT = frozenset({"EndpointConnectionError", "ConnectTimeoutError", "ProxyConnectionError"})
MAYBE_SENT = frozenset({"HTTPClientError", "ConnectionError", "SSLError", "ReadTimeoutError",
                        "ConnectionClosedError", "ResponseStreamingError", "IncompleteReadError"})
# Throttling that ECS reports under another code (a dependency's rate limit, seen as
# "InvalidParameterException: Error retrieving security group information: Request limit
# exceeded"; "ClientException: Too many concurrent attempts to create a new revision").
THROTTLE_MESSAGE = re.compile(r"rate exceeded|request limit exceeded|too many concurrent attempts", re.I)

# The driver's variables that must not replace the container's own: its identity (the task
# role's credentials come from AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, which the driver's keys
# or profile would override), and the paths of the driver's machine. Configuration such as
# AWS_REGION, AWS_NO_SIGN_REQUEST or GDAL's AWS_S3_ENDPOINT still travels.
CONTAINER_OWN_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
    "AWS_CREDENTIAL_EXPIRATION", "PATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONHOME", "HOME")

# Runs script.py in the container: rewrites the driver's paths (path_mapping, as a pattern and
# its replacements: see mapping_rewrite), tells the script to leave the variables above as the
# container has them (KEEP_VARIABLE), and forbids the script's re-exec, which would start
# script.py again without this mapping.
BOOTSTRAP = f"""import json,os,re,sys
(r,m),d=json.loads(sys.argv[1]);p=sys.argv[2];s=open(p).read()
if m:s=re.sub(r,lambda x:m[x[0]],s)
os.environ['{KEEP_VARIABLE}']=','.join([*d,os.environ.get('{KEEP_VARIABLE}','')]);os.environ['{REEXEC_VARIABLE}']='1';sys.argv=sys.argv[2:]
exec(compile(s,p,'exec'),{{'__name__':'__main__','__file__':p}})"""

# Batch's rule for job names, which also fits ECS families and startedBy.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MAX_PREFIX = 24  # the map name (prefix + 10 hex digits) stays within startedBy's old 36
_TAG_PATTERN = re.compile(r"[\w .:/=+\-@]*")


class AwsRequestError(SchedulerOutputError):
    """AWS refused a request for good (access denied, no such cluster, an invalid parameter).

    A SchedulerOutputError, so that polls failing with it end the map after a few tries
    instead of being waited out like an outage; the message names the code and the request."""


def make_client(service: str, session: Any, region: str | None, retries: bool = True) -> Any:
    """A client from the injected session, else from a new boto3 session. ``retries=False``
    switches botocore's own retries off: it repeats a request whose answer timed out, which
    for a call without an idempotency token (Batch's SubmitJob) can start a second job."""
    if session is None:
        try:
            import boto3  # optional: only the AWS pools need it
        except ImportError as exc:
            raise SchedulerUnavailableError(
                f"the AWS pools need boto3: pip install 'poolparty_raster[aws]' ({exc})") from exc
        session = boto3.Session(region_name=region)
    options: dict[str, Any] = {"region_name": region} if region else {}
    if not retries:
        from botocore.config import Config
        options["config"] = Config(retries={"total_max_attempts": 1})
    try:
        client = session.client(service, **options)
    except Exception as exc:
        if type(exc).__name__ == "NoRegionError":
            raise SchedulerUnavailableError(f"{service}: no AWS region: give region= or set "
                                            f"AWS_DEFAULT_REGION") from exc
        raise
    if session.get_credentials() is None:  # say so now, not at the first call of a map
        raise SchedulerUnavailableError(f"{service}: no AWS credentials found (environment, "
                                        f"~/.aws, SSO or an instance role)")
    return client


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (duck-typed: botocore may be absent)."""
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def error_kind(exc: BaseException) -> str:
    """"throttle", "not_sent" or "maybe_sent" (worth repeating), "permanent", or "foreign"
    (not an AWS error at all: a bug, raised as it is). A transport error is one of botocore's
    by any of its classes' names (SSLError is a ConnectionError, ResponseStreamingError an
    HTTPClientError), since one dropped connection must cost a retry, not the map."""
    code = error_code(exc)
    if code is not None:
        if code in THROTTLE_CODES or "Throttl" in code or THROTTLE_MESSAGE.search(str(exc)):
            return "throttle"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)  # type: ignore[attr-defined]
        return "maybe_sent" if code in SERVER_CODES or status >= 500 else "permanent"
    botocore = [k.__name__ for k in type(exc).__mro__ if k.__module__.startswith("botocore")]
    if NOT_SENT.intersection(botocore):
        return "not_sent"
    if MAYBE_SENT.intersection(botocore):
        return "maybe_sent"
    return "foreign"


def fatal_start(*reasons: str | None) -> bool:
    """Whether a container's failed start will fail every resubmission the same way (its
    image, registry credentials, secrets or volumes), not a rate limit that passes."""
    text = " ".join(r for r in reasons if r)
    return any(e in text for e in FATAL_START_ERRORS) and not RATE_LIMITED.search(text)


def describe_error(what: str, exc: BaseException) -> str:
    return f"{what} failed: {error_code(exc) or type(exc).__name__}: {exc}"


def submission_failure_kind(what: str, exc: Exception) -> str:
    """For a failed submission call: "not_sent" or "maybe_sent" (the caller may repeat it);
    raises the exception itself when it is not an AWS error, SubmissionRefused (the engine
    waits) for a throttle, and AwsRequestError for a permanent refusal."""
    kind = error_kind(exc)
    if kind == "foreign":
        raise exc
    if kind == "throttle":
        raise SubmissionRefused(f"{what} throttled: {error_code(exc)}") from exc
    if kind == "permanent":
        raise AwsRequestError(describe_error(what, exc)) from exc
    return kind


def call_with_retries(func: Callable[..., Any], what: str, pause: Callable[[float], None],
                      retries: int = 4, backoff: float = 0.5, **params: Any) -> Any:
    """One idempotent API call (describe, stop, terminate, list, deregister): throttling,
    5xx and transport errors are repeated with exponential backoff, then raise
    SchedulerError; a permanent refusal raises AwsRequestError at once."""
    delay = backoff
    for attempt in range(retries + 1):
        try:
            return func(**params)
        except Exception as exc:
            kind = error_kind(exc)
            if kind == "foreign":
                raise
            if kind == "permanent":
                raise AwsRequestError(describe_error(what, exc)) from exc
            if attempt == retries:
                raise SchedulerError(f"{describe_error(what, exc)} (after {attempt + 1} attempts)") from exc
            pause(delay)
            delay = min(delay * 2, 20.0)
    raise AssertionError("unreachable")


def end_each(end: Callable[[str], Any], targets: Iterable[str], label: str) -> list[str]:
    """``end(target)`` (a stop_task, a terminate_job) for every target, whatever fails on the
    way: one error must not leave the rest running. A target already gone is no failure.
    Returns what failed, each as "<label> <target>: <error>"."""
    left = []
    for target in dict.fromkeys(targets):
        try:
            end(target)
        except AwsRequestError as exc:
            if "not found" not in str(exc).lower():
                left.append(f"{label} {target}: {exc}")
        except Exception as exc:
            left.append(f"{label} {target}: {exc}")
    return left


class AwsScheduler(Scheduler):
    """What the AWS backends share: their jobs see the work_dir on EFS and have credentials of
    their own, and their API calls are repeated alike (``backoff`` set by each pool)."""

    filesystem_lag = 10.0  # EFS is close-to-open consistent; a result may show late
    unstored_variables = CONTAINER_OWN_VARIABLES  # the task role's credentials, not the caller's
    retries = 4
    backoff = 0.5

    def check_job_name(self, job_name: str) -> None:
        check_name_prefix(job_name)

    def _call(self, func: Callable[..., Any], what: str, **params: Any) -> Any:
        return call_with_retries(func, what, self.pause, self.retries, self.backoff, **params)


class RunTokens:
    """Idempotency tokens (ECS run_task's clientToken) that a resumed driver derives again.

    A token hashes the map, its work_dir's incarnation (script.py's inode and mtime: written
    once when the work_dir is made, so the same map in a work_dir made again gets new tokens),
    the member (chunk or worker), the attempt (how many jobs of the member the driver knows:
    those it started, and the records it was given to poll, a killed driver's included) and how
    many answers of that attempt started nothing. A run_task whose answer was lost is thus
    repeated with the same token by this driver, and by one resumed after it is killed, which
    submits a member without a record before polling anything and polls the records before
    resubmitting one: the service starts the task once."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[str, int]] = {}  # job id -> (map, member)
        self._attempts: Counter[tuple[str, int]] = Counter()
        self._refused: Counter[tuple[str, int, int]] = Counter()

    def note(self, map_name: str, jobs: Sequence[JobRecord]) -> None:
        """Count the members' jobs (the records of a poll, a cancel, a submission)."""
        for job in jobs:
            if job["job_id"] not in self._known:
                self._known[job["job_id"]] = (map_name, job["chunks"][0])
                self._attempts[(map_name, job["chunks"][0])] += 1

    def token(self, spec: SubmitSpec, member: int) -> str:
        attempt = self._attempts[(spec.job_name, member)]
        refused = self._refused[(spec.job_name, member, attempt)]
        try:
            made = os.stat(spec.script_path)
            incarnation = f"{made.st_ino}:{made.st_mtime_ns}"
        except OSError:
            incarnation = ""
        key = f"{spec.job_name}\0{incarnation}\0{member}\0{attempt}\0{refused}"
        return f"{member}-{attempt}-{refused}-{hashlib.sha256(key.encode()).hexdigest()[:32]}"  # <= 64

    def refused(self, map_name: str, member: int) -> None:
        """An answer came back without a task: the next request is a new one (the same token
        would be answered with the same refusal)."""
        self._refused[(map_name, member, self._attempts[(map_name, member)])] += 1

    def forget(self, map_name: str | None = None, jobs: Sequence[JobRecord] = ()) -> None:
        """Drop a map's counts: the one named, and those of the maps the jobs belong to."""
        maps = {self._known[j["job_id"]][0] for j in jobs if j["job_id"] in self._known} | {map_name}
        self._known = {k: v for k, v in self._known.items() if v[0] not in maps}
        self._attempts = Counter({k: v for k, v in self._attempts.items() if k[0] not in maps})
        self._refused = Counter({k: v for k, v in self._refused.items() if k[0] not in maps})


def check_name_prefix(job_name: str) -> None:
    """Map names become Batch job names, ECS families and startedBy: refuse what they refuse."""
    if not NAME_PATTERN.fullmatch(job_name) or len(job_name) > MAX_PREFIX:
        raise ValueError(f"job_name {job_name!r} must be 1 to {MAX_PREFIX} letters, digits, '-' or "
                         f"'_', starting with a letter or digit (AWS names allow nothing else)")


def safe_name(name: str, limit: int) -> str:
    """A name AWS accepts (defensive: map names are checked at construction already)."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    return (cleaned if cleaned[:1].isalnum() else "p" + cleaned)[:limit]


def check_tags(tags: dict[str, str]) -> None:
    for key, value in tags.items():
        if not (isinstance(key, str) and isinstance(value, str)) or not 1 <= len(key) <= 128 \
                or len(value) > 256 or not _TAG_PATTERN.fullmatch(key + value):
            raise ValueError(f"tag {key!r}: {value!r}: AWS tags are strings, keys of 1-128 and "
                             f"values of up to 256 letters, digits, spaces and + - = . _ : / @")
        if key.lower().startswith("aws:"):
            raise ValueError(f"tag {key!r}: the aws: prefix is reserved for AWS")


def aws_tags(tags: dict[str, str], job_name: str) -> dict[str, str]:
    """Everything a map creates carries its name, so that leftovers can be found and removed."""
    return {"poolparty_raster:map": job_name, **tags}


def absolute(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise ValueError(f"{what} must be an absolute path, not {path!r}")
    return path.rstrip("/") or "/"


def checked_mapping(mapping: dict[str, str] | None) -> dict[str, str]:
    """path_mapping={driver prefix: container prefix}, both absolute."""
    return {absolute(d, "path_mapping keys"): absolute(c, "path_mapping values")
            for d, c in (mapping or {}).items()}


def mapping_rewrite(mapping: dict[str, str] | None) -> tuple[str, dict[str, str]]:
    """The pattern and replacements with which BOOTSTRAP applies path_mapping to script.py,
    where paths are quoted strings (the work_dir, cwd, sys.path, variables' values). As
    map_path does, a driver prefix counts only where a path starts (after a quote, or a ':'
    of a path list) and ends there or goes on with '/' (so ``/home/me`` leaves ``/home/meg``
    alone), and the longest prefix wins: ``{"/home/me": ..., "/home/me/efs": ...}`` maps
    ``/home/me/efs/w`` by the second whatever the order given."""
    pairs = {d.rstrip("/"): c.rstrip("/") for d, c in (mapping or {}).items()}
    # "" is the root ("/" -> c): only a quoted path, never the "//" of "s3://" in a list
    alternatives = [f"(?<=['\":]){re.escape(d)}(?=[/'\":])" if d else "(?<=['\"])(?=/)"
                    for d in sorted(pairs, key=len, reverse=True)]
    return "|".join(alternatives), pairs


def container_command(spec: SubmitSpec, python: str | None, mapping: dict[str, str] | None,
                      worker_args: Sequence[str]) -> list[str]:
    """``[python, "-c", BOOTSTRAP, <mapping and dropped variables>, script.py, *worker_args]``.
    Only paths and an index travel (container overrides are limited to 8 KB): the payload
    stays in the work_dir."""
    return [python or spec.python_path, "-c", BOOTSTRAP,
            json.dumps([mapping_rewrite(mapping), list(CONTAINER_OWN_VARIABLES)], separators=(",", ":")),
            map_path(spec.script_path, mapping), *worker_args]


def spot_or_host_loss(reason: str) -> str:
    """Words naming an instance taken away under the task, for the log and TaskLostError."""
    if "spot" in reason.lower():
        return "spot interruption:"
    if reason.startswith("Host EC2"):
        return "instance lost (host EC2 terminated: spot interruption or scale-in):"
    return ""
