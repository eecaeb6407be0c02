"""The cluster's gauges: is this replica linked to the fleet's Redis, and how many replicas does it see."""

from __future__ import annotations

from typing import TYPE_CHECKING

from circuitbox.cluster import ClusterStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def bind_cluster_gauges(registry: CollectorRegistry, store: ClusterStore) -> None:
    """`circuitbox_cluster_connected` (1 / 0) and `circuitbox_cluster_replicas`, read from `store` at scrape."""
    from prometheus_client import Gauge  # a registry exists, so prometheus_client is loaded already

    connected = Gauge(
        "circuitbox_cluster_connected",
        "1 while this replica shares breaker state through the cluster's Redis, 0 while it goes on alone",
        registry=registry,
    )
    connected.set_function(lambda: 1.0 if store.connected else 0.0)
    replicas = Gauge(
        "circuitbox_cluster_replicas",
        "Replicas of this cluster group with a heartbeat in Redis (the last count known while unreachable)",
        registry=registry,
    )
    replicas.set_function(lambda: float(store.replicas))
