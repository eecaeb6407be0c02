"""circuitbox.cluster: breaker state shared by a fleet of replicas through Redis (`circuitbox[redis]`).

`ClusterStore` is the engine's state store (see `circuitbox.breakers.StateStore`); redis-py is imported only by
its `run()`, so this package imports without the extra.
"""

from circuitbox.cluster.store import ClusterStore, Record

__all__ = ["ClusterStore", "Record", "missing_extra"]


def missing_extra() -> str | None:
    """Why a cluster cannot run in this environment (redis-py is not installed), or None."""
    import importlib.util

    if importlib.util.find_spec("redis") is None:
        return "the cluster key needs redis-py: pip install 'circuitbox[redis]'"
    return None
