"""The btrfs backend: volumes are subvolumes under a configured root.

``layout`` maps names to paths (the pool, the snapshot tree beside the volumes, the
receive directory); ``listing`` reads one ``btrfs subvolume list`` into volumes and
snapshots (guid = received UUID, else UUID); ``streams`` builds ``btrfs send`` and the
checked receive; ``volume_ops`` the Cinder operations; ``backend`` ties them into
``StorageBackend``. docs/drivers.md says what it can and cannot do.
"""

from .backend import BtrfsBackend

__all__ = ["BtrfsBackend"]
