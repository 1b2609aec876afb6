"""Replication, in layers a reader sees from the folder names (each imports only those above it):

- ``logic/``: pure decisions, no I/O: the relationship spec, the plan of a stream, schedules,
  retention grids, roles after a failover, slave status, tree membership, whose holds.
- ``retry.py``: the one retry policy and link-loss report every flow (and the store calls) use.
- ``stream/``: the byte pipeline: one send to one receive (``transfer``), through the daemon
  (``relay``), one send to several receivers (``fanout``, ``fanout_lanes``, ``groups``),
  object-store calls with link reporting (``store_calls``).
- ``flows/``: one module per volume activity kind: replicate, backup, restore,
  snapshot_prune (master and slaves), bucket_prune.
- ``relationships/``: the relationship manager (runtime, registry, operator verbs, fencing,
  reactions to activity events, upkeep, rendering, the cycle gate, the facade that wires
  them) and the activities that act on a whole relationship: its cycle, failover, rejoin.
"""
