"""cerssd: replication daemon for ZFS storage nodes using stateless snapshots."""

__version__ = "0.1.0"
