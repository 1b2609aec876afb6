"""The ZFS backend (zfs-fuse and OpenZFS), driven through the ``zfs``/``zpool`` tools.

``backend`` implements ``StorageBackend`` (and keeps the ZFS-shaped methods it is built
from: argv builders, holds, ``set_readonly`` with zfs-fuse's remount); ``probe`` reads
capabilities off the usage text; ``names`` holds what only ZFS spells: hold tags,
bookmark names, the pool as a name's first component, send flags; ``fuse`` holds the
workarounds for zfs-fuse's quirks (readonly not in force, no ``zfs holds``).
"""

from .backend import ZfsBackend

__all__ = ["ZfsBackend"]
