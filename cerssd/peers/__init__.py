"""Peer daemons: cerssd on another node, to which node-local work is delegated."""
