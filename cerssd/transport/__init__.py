"""How cerssd reaches a server: running commands and streams there, locally or over SSH.

``runner`` runs argv lists on the node itself, ``ssh`` on a remote server (asyncssh for
control commands, OpenSSH for bulk streams), ``stream`` is one end of a byte stream
started on demand, ``process`` stops the processes behind them, and ``errors`` holds the
``LinkError`` family: the only transport type the flows know. Storage backends are
built on a runner; flows never see one (``cerssd.storage`` is what they use).
"""
