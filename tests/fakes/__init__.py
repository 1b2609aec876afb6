"""Stand-ins used by tests only (never by the daemon): an in-memory storage backend."""
