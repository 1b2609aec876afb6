"""``python -m cerssd.cli`` runs cerssctl (the same as the ``cerssctl`` console script)."""

from .main import main

main()
