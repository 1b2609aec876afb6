"""``cerssctl``: the operator's command line, a thin client of the control socket.

``main`` parses the command line and runs the generic commands; ``relationships``,
``backups`` and ``watch`` (the live views) add theirs. All of them talk to the daemon
through ``client`` and print through ``output``, which import nothing of the others.
"""
