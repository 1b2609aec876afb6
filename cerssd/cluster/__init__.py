"""Clustered managing daemons (opt-in, ``[cluster]``): leadership and shared state in etcd."""
