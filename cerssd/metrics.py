"""Prometheus metrics, read from the engine and the servers at scrape time.

A custom collector rather than gauges updated on every change: the engine is
the single source of truth, so a scrape can never disagree with the API. The
only state kept here is what the engine forgets: totals of finished work.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .activity import ActivityRecord, LinkCondition, State
from .capacity import CapacityCache
from .cluster.member import ClusterMember
from .cluster.metrics import ClusterCollector
from .engine import Activity, ActivityEngine
from .policies.registry import PolicyRegistry
from .replication.logic.roles import STATUSES as ROLE_STATUSES
from .replication.logic.slave_status import STATES
from .replication.logic.tree_backup_facts import BackupState, StoreBackups
from .replication.logic.tree_status import MemberState
from .replication.relationships.auto_failover import AutoFailoverWatch
from .replication.relationships.rendering import RelationshipView
from .replication.relationships.runtime import Runtime
from .replication.stream.groups import FanoutGroups
from .servers import ServerRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DaemonCollector(Collector):
    def __init__(self, engine: ActivityEngine, servers: ServerRegistry,
                 capacity: CapacityCache | None = None) -> None:
        self.engine = engine
        self.servers = servers
        self.capacity = capacity
        self.started = time.time()
        self.finished: Tally[tuple[str, str]] = Tally()
        self.finished_bytes: Tally[tuple[str, ...]] = Tally()
        self.finished_pairs: Tally[tuple[str, ...]] = Tally()
        engine.add_listener(self._on_change)

    def _on_change(self, record: ActivityRecord, activity: Activity) -> None:
        if record.state.terminal:
            self.finished[(record.kind, str(record.state))] += 1
            self.finished_bytes[(record.kind,)] += record.usage.bytes_read
            if record.kind == "replicate":
                self.finished_pairs[_pair(record)] += record.usage.bytes_on_wire

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("cerssd_info", "cerssd build information", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        start = GaugeMetricFamily("cerssd_start_time_seconds",
                                  "Unix time the daemon started")
        start.add_metric([], self.started)
        yield start
        yield from self._activities()
        yield from self._servers()
        if self.capacity is not None:
            yield from self._pools(self.capacity)

    def _activities(self) -> Iterator[Metric]:
        running = [a.snapshot() for a in self.engine.activities()]
        by_state = GaugeMetricFamily("cerssd_activities", "Activities known, by kind and state",
                                     labels=["kind", "state"])
        for (kind, state), n in sorted(self.engine.counts().items()):
            by_state.add_metric([kind, state], n)
        yield by_state
        finished = CounterMetricFamily("cerssd_activities_finished",
                                       "Activities that reached a terminal state",
                                       labels=["kind", "state"])
        for (kind, state), n in sorted(self.finished.items()):
            finished.add_metric([kind, state], n)
        yield finished
        yield _live_plus_finished(
            CounterMetricFamily("cerssd_bytes_moved", "Bytes read from sources by activities",
                                labels=["kind"]),
            [((r.kind,), r.usage.bytes_read) for r in running], self.finished_bytes)
        yield _live_plus_finished(
            CounterMetricFamily("cerssd_replication_bytes",
                                "Bytes replicated per source and destination server, counted "
                                "while they flow", labels=["source", "destination"]),
            [(_pair(r), r.usage.bytes_on_wire) for r in running if r.kind == "replicate"],
            self.finished_pairs)
        yield from self._progress(running)
        yield _by_route(running)

    def _progress(self, running: list[ActivityRecord]) -> Iterator[Metric]:
        labels = ["id", "kind", "volume", "unit"]
        done = GaugeMetricFamily("cerssd_activity_progress_done",
                                 "Progress n of a running activity", labels=labels)
        total = GaugeMetricFamily("cerssd_activity_progress_expected",
                                  "Progress m of a running activity (0 = open-ended)",
                                  labels=labels)
        suspended = GaugeMetricFamily("cerssd_activity_suspended",
                                      "1 while the activity is suspended", labels=labels)
        for r in running:
            values = [r.id, r.kind, r.volume or "", r.progress.unit]
            done.add_metric(values, r.progress.done)
            total.add_metric(values, r.progress.total)
            suspended.add_metric(values, 1 if r.state == State.SUSPENDED else 0)
        yield done
        yield total
        yield suspended

    def _servers(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("cerssd_server_available",
                               "1 when the server's backend answered its capability probe",
                               labels=["server"])
        caps = GaugeMetricFamily("cerssd_server_capability",
                                 "Capabilities published per server (1 = has it)",
                                 labels=["server", "capability"])
        for name, entry in sorted(self.servers.entries.items()):
            up.add_metric([name], 1 if entry.probed else 0)
            if entry.probed:
                for cap, value in sorted(entry.capabilities.to_json().items()):
                    caps.add_metric([name, cap], 1 if value else 0)
        yield up
        yield caps
        link_up = GaugeMetricFamily("cerssd_link_up", "1 while the link to a remote server is up",
                                    labels=["server"])
        losses = CounterMetricFamily("cerssd_link_losses", "Times the link was lost",
                                     labels=["server"])
        retries = CounterMetricFamily("cerssd_link_retries", "Retries scheduled on the link",
                                      labels=["server"])
        for link in sorted(self.servers.links.all(), key=lambda x: x.server):
            link_up.add_metric([link.server], 1 if link.state == LinkCondition.UP else 0)
            losses.add_metric([link.server], link.losses)
            retries.add_metric([link.server], self.servers.links.retries[link.server])
        yield link_up
        yield losses
        yield retries


    @staticmethod
    def _pools(capacity: CapacityCache) -> Iterator[Metric]:
        """Each server's pools' space, as last measured (``capacity.py``: at most every
        30 s; a scrape reads the figures, it does not measure). One series per server
        and pool: bounded by the config and the pools, never by volumes."""
        labels = ["server", "pool"]
        families = {key: GaugeMetricFamily(f"cerssd_pool_{key}_bytes", text, labels=labels)
                    for key, text in (
                        ("total", "The pool's size"),
                        ("free", "Free space in the pool"),
                        ("allocated", "Space allocated in the pool"),
                        ("provisioned", "What the pool's volumes may grow to: zvol sizes, "
                                        "filesystem quotas, else what a filesystem uses"))}
        ratio = GaugeMetricFamily("cerssd_pool_thin_provisioning_ratio",
                                  "Provisioned over total: above 1 the pool is overcommitted",
                                  labels=labels)
        measured = GaugeMetricFamily("cerssd_pool_measured_timestamp_seconds",
                                     "Unix time the server's pool space was last measured",
                                     labels=["server"])
        for server, facts in sorted(capacity.cached().items()):
            if facts.measured_at is not None:
                measured.add_metric([server], facts.measured_at)
            for pool in facts.pools:
                values = [server, pool.pool]
                for key, family in families.items():
                    family.add_metric(values, getattr(pool, key))
                ratio.add_metric(values, pool.thin_ratio)
        yield from families.values()
        yield ratio
        yield measured


def _live_plus_finished(family: CounterMetricFamily,
                        live: list[tuple[tuple[str, ...], int]],
                        finished: Tally[tuple[str, ...]]) -> CounterMetricFamily:
    """A byte counter: what finished activities moved plus what running ones have so far."""
    totals = Tally(finished)
    for labels, value in live:
        totals[labels] += value
    for labels in sorted(totals):
        family.add_metric(list(labels), totals[labels])
    return family


def _pair(record: ActivityRecord) -> tuple[str, str]:
    return (record.params.get("source", ""), record.params.get("destination", ""))


class RelationshipCollector(Collector):
    """Per relationship and slave: lag, last success, state; cycles and fan-out sends."""

    def __init__(self, relationships: RelationshipView, groups: FanoutGroups) -> None:
        self.relationships = relationships
        self.groups = groups

    def collect(self) -> Iterator[Metric]:
        labels = ["relationship", "slave"]
        lag = GaugeMetricFamily("cerssd_replication_lag_seconds",
                                "Age of the newest snapshot the slave has (RPO achieved)",
                                labels=labels)
        success = GaugeMetricFamily("cerssd_replication_last_success_timestamp_seconds",
                                    "Unix time of the slave's last successful transfer",
                                    labels=labels)
        last_bytes = GaugeMetricFamily("cerssd_replication_last_cycle_bytes",
                                       "Bytes sent to the slave by its last transfer",
                                       labels=labels)
        state = GaugeMetricFamily("cerssd_replication_slave_state",
                                  "1 for the slave's current state",
                                  labels=[*labels, "state"])
        cycles = CounterMetricFamily("cerssd_relationship_cycles",
                                     "Cycles (snapshot + transfers started) run",
                                     labels=["relationship"])
        skipped = CounterMetricFamily("cerssd_relationship_skipped_cycles",
                                      "Cycles that took no snapshot because the pre hook "
                                      "failed", labels=["relationship"])
        backed_up = GaugeMetricFamily("cerssd_backup_last_success_timestamp_seconds",
                                      "Unix time of the relationship's last successful backup "
                                      "to the store (every member of a tree); one series per "
                                      "relationship and configured store",
                                      labels=["relationship", "store"])
        trees = []
        for rt in sorted(self.relationships.all(), key=lambda r: r.name):
            cycles.add_metric([rt.name], rt.cycles)
            skipped.add_metric([rt.name], rt.skipped_cycles)
            for store in rt.spec.stores:
                if (at := rt.backup_success_at.get(store)) is not None:
                    backed_up.add_metric([rt.name, store], at)
            if rt.tree is not None:  # lag: the worst member's (``_trees``); state as a whole
                trees.append(rt)
                for slave in self.relationships.slaves_json(rt):
                    for name in STATES:
                        state.add_metric([rt.name, slave["server"], name],
                                         1 if slave["state"] == name else 0)
                continue
            for slave in self.relationships.slaves_json(rt):
                values = [rt.name, slave["server"]]
                if slave["lag_seconds"] is not None:
                    lag.add_metric(values, slave["lag_seconds"])
                if slave["last_success_at"] is not None:
                    success.add_metric(values, slave["last_success_at"])
                last_bytes.add_metric(values, slave["last_cycle_bytes"])
                for name in STATES:
                    state.add_metric([*values, name], 1 if slave["state"] == name else 0)
        yield from self._trees(trees, lag)
        yield from (lag, success, last_bytes, state, cycles, skipped, backed_up)
        yield from self._roles()
        groups = self.groups
        sends = CounterMetricFamily("cerssd_fanout_sends",
                                    "zfs send processes started to feed several slaves at once")
        sends.add_metric([], groups.sends + groups.live_sends())
        yield sends


    @staticmethod
    def _trees(trees: list[Runtime], lag: GaugeMetricFamily) -> Iterator[Metric]:
        """A tree's series per relationship and slave, whatever its number of members:
        counts by member state and the worst lag (also as the replication lag, so the
        lag alert covers trees); per member only with ``member_metrics``."""
        members = GaugeMetricFamily("cerssd_tree_members", "Members of a tree relationship",
                                    labels=["relationship"])
        by_state = GaugeMetricFamily("cerssd_tree_members_by_state",
                                     "A tree's members in each state on a slave (in-sync, "
                                     "behind, sending, failing)",
                                     labels=["relationship", "slave", "state"])
        gone = GaugeMetricFamily("cerssd_tree_members_gone",
                                 "Members destroyed on the master (or renamed out of the "
                                 "tree) since the daemon started; their copies are kept",
                                 labels=["relationship"])
        backups = GaugeMetricFamily("cerssd_tree_backup_members_by_state",
                                    "A tree's members in each backup state in an object "
                                    "store (backed-up, behind, sending, failing)",
                                    labels=["relationship", "store", "state"])
        member_lag = GaugeMetricFamily("cerssd_tree_member_lag_seconds",
                                       "Age of the newest snapshot of the member the slave "
                                       "has (only with member_metrics)",
                                       labels=["relationship", "slave", "member"])
        now = time.time()
        for rt in trees:
            assert rt.tree is not None
            servers = [s.server for s in rt.spec.slaves]
            summary = rt.tree.summary(servers, now)
            members.add_metric([rt.name], summary["members"])
            gone.add_metric([rt.name], len(summary["gone"]))
            for server, counts in summary["slaves"].items():
                for st in MemberState:
                    by_state.add_metric([rt.name, server, st.value],
                                        counts[st.value.replace("-", "_")])
                if counts["worst_lag_seconds"] is not None:
                    lag.add_metric([rt.name, server], counts["worst_lag_seconds"])
            for store in rt.spec.stores:
                facts = rt.tree.backups.get(store, StoreBackups())
                counts = Tally(facts.state(m) for m in rt.tree.members.values())
                for bst in BackupState:
                    backups.add_metric([rt.name, store, bst.value], counts[bst])
            if rt.spec.member_metrics:
                for m in rt.tree.members.values():
                    for server in servers:
                        if (value := m.lag(server, now)) is not None:
                            member_lag.add_metric([rt.name, server, m.name], value)
        yield from (members, by_state, gone, member_lag, backups)

    def _roles(self) -> Iterator[Metric]:
        status = GaugeMetricFamily("cerssd_relationship_replication_status",
                                   "1 for the relationship's replication status (enabled, "
                                   "failed-over, failing-over, ...)",
                                   labels=["relationship", "status"])
        active = GaugeMetricFamily("cerssd_relationship_active_server",
                                   "1 for the server that is the relationship's master",
                                   labels=["relationship", "server", "home"])
        fenced = GaugeMetricFamily("cerssd_relationship_fenced",
                                   "1 per old master fenced by an unplanned failover; "
                                   "applied=0 until it has been reached and made read-only",
                                   labels=["relationship", "server", "applied"])
        loss = GaugeMetricFamily("cerssd_failover_data_loss_window_seconds",
                                 "Writes an unplanned failover may have lost: seconds "
                                 "between the promoted snapshot and the failover",
                                 labels=["relationship"])
        for rt in sorted(self.relationships.all(), key=lambda r: r.name):
            current = self.relationships.replication_status(rt)
            for name in ROLE_STATUSES:
                status.add_metric([rt.name, name], 1 if current == name else 0)
            active.add_metric([rt.name, rt.spec.master, str(rt.spec.master == rt.home).lower()],
                              1)
            for f in rt.failover.fenced.values():
                fenced.add_metric([rt.name, f.server, "1" if f.applied_at else "0"], 1)
            window = rt.failover.data_loss.window_seconds if rt.failover.data_loss else None
            if window is not None:
                loss.add_metric([rt.name], window)
        yield from (status, active, fenced, loss)


class PolicyCollector(Collector):
    """Per snapshot policy (one series each, whatever its volumes): last run, runs,
    skipped runs and failures, snapshots kept."""

    def __init__(self, policies: PolicyRegistry) -> None:
        self.policies = policies

    def collect(self) -> Iterator[Metric]:
        labels = ["policy"]
        last = GaugeMetricFamily("cerssd_policy_last_run_timestamp_seconds",
                                 "Unix time of the policy's last run that did not fail",
                                 labels=labels)
        kept = GaugeMetricFamily("cerssd_policy_snapshots_kept",
                                 "The policy's snapshots on its server after its last prune "
                                 "(a tree: its labels, one atomic snapshot each)",
                                 labels=labels)
        runs = CounterMetricFamily("cerssd_policy_runs", "Runs that did not fail",
                                   labels=labels)
        skipped = CounterMetricFamily("cerssd_policy_skipped_runs",
                                      "Runs whose pre hook failed: no snapshot taken",
                                      labels=labels)
        failures = CounterMetricFamily("cerssd_policy_failures",
                                       "Runs that failed (server, link or command)",
                                       labels=labels)
        for rt in self.policies.all():
            if rt.last_run_at is not None:
                last.add_metric([rt.name], rt.last_run_at)
            if rt.kept is not None:
                kept.add_metric([rt.name], rt.kept)
            runs.add_metric([rt.name], rt.runs)
            skipped.add_metric([rt.name], rt.skipped)
            failures.add_metric([rt.name], rt.failures)
        yield from (last, kept, runs, skipped, failures)


class Metrics:
    def __init__(self, engine: ActivityEngine, servers: ServerRegistry,
                 relationships: RelationshipView | None = None,
                 groups: FanoutGroups | None = None, *,
                 capacity: CapacityCache | None = None,
                 policies: PolicyRegistry | None = None,
                 cluster: ClusterMember | None = None,
                 auto: AutoFailoverWatch | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        if cluster is not None:
            self.registry.register(ClusterCollector(cluster, auto.refused if auto else dict))
        self.collector = DaemonCollector(engine, servers, capacity)
        self.registry.register(self.collector)
        if policies is not None:
            self.registry.register(PolicyCollector(policies))
        if relationships is not None:
            self.registry.register(RelationshipCollector(
                relationships, groups if groups is not None else FanoutGroups()))
        self.duration = Histogram(
            "cerssd_replication_duration_seconds", "Wall time of finished replications",
            ["source", "destination", "state"], registry=self.registry,
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600))
        self.errors = Counter(
            "cerssd_activity_errors", "Failed activities by kind and reason",
            ["kind", "reason"], registry=self.registry)
        engine.add_listener(self._on_change)

    def _on_change(self, record: ActivityRecord, activity: Activity) -> None:
        if not record.state.terminal:
            return
        if record.kind == "replicate":
            source, destination = _pair(record)
            self.duration.labels(source, destination, str(record.state)).observe(
                record.usage.elapsed_seconds)
        if record.state == State.FAILED and record.status is not None:
            self.errors.labels(record.kind, record.status.reason or "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _by_route(running: list[ActivityRecord]) -> Metric:
    """Live activities by where they run (``node``: a peer daemon's server, or empty for
    this daemon) and how their data moves (``route``; docs/peers.md)."""
    family = GaugeMetricFamily("cerssd_activities_live_by_route",
                               "Live activities by kind, data route and the node running them",
                               labels=["kind", "route", "node"])
    counts = Tally((r.kind, str(r.route), r.node or "") for r in running)
    for key, n in sorted(counts.items()):
        family.add_metric(list(key), n)
    return family
