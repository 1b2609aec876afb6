"""A small typed client for etcd's v3 JSON gateway (grpc-gateway), over aiohttp.

Why not a gRPC client: PyPI's asyncio client (``aetcd``) brings grpcio and protobuf
for the five calls cerssd makes; etcd serves the same API as JSON on its client
port (``/v3/kv/range``, ``/v3/kv/txn``, ``/v3/lease/grant``, ``/v3/lease/keepalive``,
``/v3/lease/revoke``; keys and values base64). This module is a protocol adapter
only: leases and transactions are etcd's, no consensus is decided here.

Every call tries the configured endpoints in turn, starting with the last one that
answered; a member that is not in the quorum answers with an error or times out and
the next is tried. ``EtcdUnavailable`` means no member answered.
"""

from __future__ import annotations

import base64
import enum
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

#: Seconds one request to one member may take before the next member is tried.
REQUEST_TIMEOUT = 2.0


class EtcdUnavailable(Exception):
    """No configured etcd member answered (or none with a quorum)."""


class LeaseGone(Exception):
    """The lease expired or was revoked: every key attached to it is gone."""


class Target(enum.StrEnum):
    """What a transaction's compare looks at (etcd's ``Compare.CompareTarget``)."""

    CREATE = "CREATE"
    MOD = "MOD"
    VALUE = "VALUE"
    LEASE = "LEASE"


@dataclass(frozen=True)
class Compare:
    """``key``'s ``target`` EQUAL to ``value`` (a revision, a lease id or bytes)."""

    key: str
    target: Target
    value: int | str

    def to_json(self) -> dict[str, Any]:
        field = {Target.CREATE: "create_revision", Target.MOD: "mod_revision",
                 Target.VALUE: "value", Target.LEASE: "lease"}[self.target]
        value = _b64(self.value) if self.target == Target.VALUE else str(self.value)
        return {"key": _b64(self.key), "target": self.target.value, "result": "EQUAL",
                field: value}


@dataclass(frozen=True)
class Put:
    key: str
    value: str
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        put: dict[str, Any] = {"key": _b64(self.key), "value": _b64(self.value)}
        if self.lease:
            put["lease"] = str(self.lease)
        return {"request_put": put}


@dataclass(frozen=True)
class Delete:
    key: str

    def to_json(self) -> dict[str, Any]:
        return {"request_delete_range": {"key": _b64(self.key)}}


@dataclass(frozen=True)
class Range:
    """Read ``key`` inside a transaction (its answer is in ``TxnResult.ranges``)."""

    key: str

    def to_json(self) -> dict[str, Any]:
        return {"request_range": {"key": _b64(self.key)}}


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    #: What each ``Range`` of the branch that ran found, in order.
    ranges: tuple[tuple[KeyValue, ...], ...] = ()


Op = Put | Delete | Range


def _b64(value: int | str) -> str:
    return base64.b64encode(str(value).encode()).decode()


def _unb64(value: str) -> str:
    return base64.b64decode(value).decode()


def _prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(key=_unb64(item["key"]), value=_unb64(item.get("value", "")),
                    create_revision=int(item.get("create_revision", 0)),
                    mod_revision=int(item.get("mod_revision", 0)),
                    lease=int(item.get("lease", 0)))


class EtcdClient:
    """The v3 calls cerssd makes, on the first member that answers."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint")
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self._first = 0
        self._session: aiohttp.ClientSession | None = None
        #: HTTP requests sent, by call (``kv/range``, ``lease/keepalive``...), every
        #: member tried counted: what a round costs etcd (a metric, and the test that
        #: holds a round's cost flat in the number of relationships).
        self.requests: Counter[str] = Counter()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        errors = []
        n = len(self.endpoints)
        for i in range(n):
            index = (self._first + i) % n
            url = self.endpoints[index] + path
            self.requests[path.removeprefix("/v3/")] += 1
            try:
                async with self._session.post(url, data=json.dumps(body)) as resp:
                    data: dict[str, Any] = await resp.json(content_type=None)
                    if resp.status != 200:
                        raise _GatewayError(resp.status, data)
            except _GatewayError as exc:
                if exc.lease_gone:
                    raise LeaseGone(exc.message) from None
                errors.append(f"{self.endpoints[index]}: {exc.message}")
                continue
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                errors.append(f"{self.endpoints[index]}: {exc or type(exc).__name__}")
                continue
            self._first = index
            return data
        raise EtcdUnavailable("; ".join(errors))

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""
        data = await self._call("/v3/lease/grant", {"TTL": str(ttl)})
        return int(data["ID"])

    async def keepalive(self, lease: int) -> int:
        """Refresh ``lease``; returns its new TTL. Raises ``LeaseGone`` once expired."""
        data = await self._call("/v3/lease/keepalive", {"ID": str(lease)})
        ttl = int(data.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseGone(f"lease {lease:x} expired")
        return ttl

    async def time_to_live(self, lease: int) -> int | None:
        """Seconds ``lease`` has left; None once it has expired."""
        data = await self._call("/v3/lease/timetolive", {"ID": str(lease)})
        ttl = int(data.get("TTL", -1))
        return ttl if ttl >= 0 else None

    async def revoke(self, lease: int) -> None:
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

    async def get(self, key: str) -> KeyValue | None:
        data = await self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = data.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        data = await self._call("/v3/kv/range", {"key": _b64(prefix),
                                                 "range_end": _prefix_end(prefix)})
        return [_kv(item) for item in data.get("kvs") or []]

    async def put(self, key: str, value: str, lease: int = 0) -> None:
        await self.txn([], [Put(key, value, lease)])

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op],
                  failure: Sequence[Op] = ()) -> TxnResult:
        """All of ``compare`` true: ``success`` is applied, else ``failure``; atomically."""
        data = await self._call("/v3/kv/txn", {
            "compare": [c.to_json() for c in compare],
            "success": [op.to_json() for op in success],
            "failure": [op.to_json() for op in failure]})
        ranges = tuple(tuple(_kv(item) for item in r["response_range"].get("kvs") or [])
                       for r in data.get("responses") or [] if "response_range" in r)
        return TxnResult(succeeded=bool(data.get("succeeded")),
                         revision=int(data.get("header", {}).get("revision", 0)),
                         ranges=ranges)


class _GatewayError(Exception):
    def __init__(self, status: int, data: dict[str, Any]) -> None:
        self.message = str(data.get("error") or data.get("message") or f"HTTP {status}")
        super().__init__(self.message)

    @property
    def lease_gone(self) -> bool:
        return "requested lease not found" in self.message
