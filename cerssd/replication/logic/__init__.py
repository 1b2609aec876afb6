"""Pure decisions of replication: values in, values out, no I/O and no event loop."""
