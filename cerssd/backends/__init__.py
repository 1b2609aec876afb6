"""Volume drivers: one module per backend behind a small protocol (``base``)."""
