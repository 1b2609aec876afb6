"""Replication: planning, the transfer pipeline, and the flows built on them."""
