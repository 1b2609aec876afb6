"""One module per volume activity kind, each registered with the engine by the daemon."""
