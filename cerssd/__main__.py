"""``python -m cerssd`` runs the daemon (the same as the ``cerssd`` console script)."""

from .daemon import main

main()
