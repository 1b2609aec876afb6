"""Storage: what the flows need from a server's volumes, and the backends that give it.

``interface`` declares ``StorageBackend``, the protocol the flows are written against
(named for the domain: snapshots, streams, pins, fencing), with its values (``values``)
and errors (``errors``); ``names`` is the volume and snapshot grammar cerssd accepts
everywhere. Each backend is a package (``zfs``: zfs-fuse and OpenZFS; ``btrfs``) and one
line in ``registry``, which maps a server's ``backend`` config key to it; ``tools`` probes
what a driver's work needs beside its own commands (rsync for the generic path).
"""
