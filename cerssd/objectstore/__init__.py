"""Object-store targets: S3-compatible buckets that snapshots stream into and back out of."""
