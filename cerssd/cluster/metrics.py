"""The cluster's metrics: etcd reachability, this manager's lease, who leads what."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .member import ClusterMember


class ClusterCollector(Collector):
    def __init__(self, member: ClusterMember,
                 refused: Callable[[], Mapping[str, bool]] = dict) -> None:
        self.member = member
        #: Per relationship watched for automatic failover here: refused or not.
        self.refused = refused

    def collect(self) -> Iterator[Metric]:
        m = self.member
        up = GaugeMetricFamily("cerssd_cluster_etcd_up",
                               "1 if this manager's last round with etcd succeeded",
                               labels=["node"])
        up.add_metric([m.config.node], 1 if m.reachable else 0)
        expiry = GaugeMetricFamily("cerssd_cluster_lease_expiry_timestamp_seconds",
                                   "When this manager's lease expires unless renewed "
                                   "(absent while it holds none)", labels=["node"])
        if (at := m.lease_expires_at()) is not None:
            expiry.add_metric([m.config.node], at)
        labels = ["relationship", "node"]
        leading = GaugeMetricFamily("cerssd_cluster_leading",
                                    "1 if this manager leads the relationship", labels=labels)
        has_leader = GaugeMetricFamily(
            "cerssd_cluster_has_leader",
            "1 if some manager holds the relationship's leader lock, as seen here",
            labels=labels)
        for name, seen in m.to_json()["relationships"].items():
            leading.add_metric([name, m.config.node], 1 if seen["leading"] else 0)
            has_leader.add_metric([name, m.config.node], 1 if seen["node"] else 0)
        taken = CounterMetricFamily("cerssd_cluster_leaderships_taken",
                                    "Relationship leaderships this manager took",
                                    labels=["node"])
        taken.add_metric([m.config.node], m.taken)
        lost = CounterMetricFamily("cerssd_cluster_leaderships_lost",
                                   "Relationship leaderships this manager lost (stepped "
                                   "down: lease lost, write refused)", labels=["node"])
        lost.add_metric([m.config.node], m.lost)
        requests = CounterMetricFamily(
            "cerssd_cluster_etcd_requests",
            "HTTP requests this manager sent to etcd, by call (each member tried counts)",
            labels=["node", "call"])
        for call, n in sorted(m.client.requests.items()):
            requests.add_metric([m.config.node, call], n)
        auto = GaugeMetricFamily(
            "cerssd_cluster_auto_failover_refused",
            "1 if the master is down and automatic failover was refused (no slave within "
            "max_data_loss)", labels=labels)
        for name, refused in self.refused().items():
            auto.add_metric([name, m.config.node], 1 if refused else 0)
        yield from (up, expiry, leading, has_leader, taken, lost, requests, auto)
