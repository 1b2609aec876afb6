"""The delegated activity's logic against a fake peer (fast tier: no SSH, no daemon).

The integration tests (``test_peers.py``) run it against a real peer daemon over a real
sshd; these pin the rules that are hard to provoke there: a lost create answered again
with the same child, a peer that forgot its child, a refused version.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cerssd.activity import State
from cerssd.engine import ActivityEngine
from cerssd.journal import Journal
from cerssd.links import Links
from cerssd.peers.client import PeerAnswer, PeerUnavailable, PeerVersionMismatch
from cerssd.peers.delegate import ChildRequest, DelegatedWork
from cerssd.replication.retry import RetryPolicy

FAST = RetryPolicy(max_interval=0.05, deadline=5.0)


class FakePeer:
    """A peer daemon's API as the parent uses it: one child activity it runs."""

    server = "nodeA"

    def __init__(self) -> None:
        self.children: dict[str, dict[str, Any]] = {}
        self.creates: list[dict[str, Any]] = []
        self.fail_next: list[Exception] = []
        self.version_error: Exception | None = None
        self.made = 0

    async def check_version(self) -> str:
        if self.version_error is not None:
            raise self.version_error
        return "x"

    async def request(self, method: str, path: str, body: Any = None) -> PeerAnswer:
        await asyncio.sleep(0)
        if self.fail_next:
            raise self.fail_next.pop(0)
        if method == "POST" and path == "/v1/backups":
            self.creates.append(body)
            same = [c for c in self.children.values() if c["parent"] == body["parent"]]
            child = same[0] if same else self._new(body["parent"])
            return PeerAnswer(200 if same else 202, child)
        child_id = path.split("/")[3].partition("?")[0]
        child = self.children.get(child_id)
        if child is None:
            return PeerAnswer(404, {"detail": "no activity"})
        verb = path.rpartition("/")[2]
        if method == "POST":
            child["state"] = {"suspend": "suspended", "resume": "running",
                              "cancel": "cancelled"}[verb]
        return PeerAnswer(200, child)

    def _new(self, parent: str) -> dict[str, Any]:
        child_id, self.made = f"c{self.made}", self.made + 1
        self.children[child_id] = child = {
            "id": child_id, "parent": parent, "state": "running", "status": None,
            "progress": {"done": 0, "total": 100, "unit": "bytes", "estimated": False},
            "usage": {"bytes_read": 0, "bytes_on_wire": 0}, "params": {}}
        return child

    def finish(self, child_id: str, done: int = 100) -> None:
        child = self.children[child_id]
        child.update(state="succeeded", status={"code": 0, "message": "succeeded"})
        child["progress"]["done"] = child["usage"]["bytes_read"] = done
        child["params"] = {"manifest_key": "k/manifest.json"}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ActivityEngine, FakePeer]:
    peer = FakePeer()
    engine = ActivityEngine(Journal(tmp_path / "journal.sqlite3"))
    engine.register("backup", lambda r: DelegatedWork(
        peer, Links(["nodeA"]), FAST, ChildRequest("/v1/backups", {"snapshot": "p/v@s"})))
    return engine, peer


async def until(check: Any) -> Any:
    for _ in range(400):
        if value := check():
            return value
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


async def test_mirrors_the_child_and_journals_both_ids(setup: Any) -> None:
    engine, peer = setup
    record = engine.submit("backup", self_restarting=True)
    await until(lambda: peer.children)
    peer.children["c0"]["progress"]["done"] = 40
    await until(lambda: engine.get(record.id).snapshot().progress.done == 40)
    peer.finish("c0")
    done = await engine.wait(record.id, 5)
    assert done.state == State.SUCCEEDED and done.progress.done == 100
    assert done.params["peer_activity"] == "c0"
    assert done.params["peer_result"] == {"manifest_key": "k/manifest.json"}
    assert peer.creates[0]["parent"] == record.id


async def test_a_create_whose_answer_was_lost_makes_one_child(setup: Any) -> None:
    engine, peer = setup
    original = peer.request

    async def lose_first_answer(method: str, path: str, body: Any = None) -> PeerAnswer:
        answer = await original(method, path, body)
        if method == "POST" and len(peer.creates) == 1:
            raise PeerUnavailable("peer daemon on nodeA broke off POST")
        return answer

    peer.request = lose_first_answer  # type: ignore[method-assign]
    record = engine.submit("backup", self_restarting=True)
    await until(lambda: len(peer.creates) == 2)
    peer.finish("c0")
    done = await engine.wait(record.id, 5)
    assert done.state == State.SUCCEEDED and done.usage.retries == 1
    assert list(peer.children) == ["c0"]  # the second create was answered with the first


async def test_suspend_and_cancel_pass_through(setup: Any) -> None:
    engine, peer = setup
    record = engine.submit("backup", self_restarting=True)
    await until(lambda: peer.children)
    await engine.suspend(record.id)
    await until(lambda: peer.children["c0"]["state"] == "suspended")
    await engine.resume(record.id)
    await until(lambda: peer.children["c0"]["state"] == "running")
    await engine.cancel(record.id)
    done = await engine.wait(record.id, 5)
    assert done.state == State.CANCELLED and peer.children["c0"]["state"] == "cancelled"


async def test_a_forgotten_child_is_created_again(setup: Any) -> None:
    engine, peer = setup
    record = engine.submit("backup", self_restarting=True)
    await until(lambda: peer.children)
    del peer.children["c0"]  # the peer's journal was reset
    await until(lambda: "c1" in peer.children)
    peer.finish("c1")
    done = await engine.wait(record.id, 5)
    assert done.state == State.SUCCEEDED and done.params["peer_activity"] == "c1"


async def test_a_peer_of_another_version_fails_the_activity_naming_it(setup: Any) -> None:
    engine, peer = setup
    peer.version_error = PeerVersionMismatch(
        "peer daemon on nodeA runs cerssd 0.0.1; this daemon runs cerssd 0.1.0: refused",
        "0.0.1")
    done = await engine.wait(engine.submit("backup", self_restarting=True).id, 5)
    assert done.state == State.FAILED and done.status is not None
    assert "cerssd 0.0.1" in done.status.message and done.status.reason == "peer"
    assert peer.creates == []
