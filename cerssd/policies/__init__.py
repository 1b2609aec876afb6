"""Snapshot policies: snapshots on a schedule with a retention grid, apart from replication."""
