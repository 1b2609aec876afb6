"""How cerssd reaches a server: running commands and streams there, locally or over SSH.

``runner`` runs argv lists on the node itself, ``ssh`` on a remote server (asyncssh for
control commands, OpenSSH for bulk streams), ``stream`` is one end of a byte stream
started on demand, ``process`` stops the processes behind them, and ``errors`` holds the
``LinkError`` family: the only transport type the flows know. Storage backends are
built on a runner; flows never see one (``cerssd.storage`` is what they use).
"""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

#: asyncssh still names DSA key types in its type aliases; with cryptography ≥ 43 each
#: import prints a dozen "DSA is deprecated" lines, before cerssd has logged anything (and
#: cerssd never offers or accepts DSA keys: OpenSSH dropped them). Only that warning, from
#: asyncssh's modules, is silenced: every other warning still shows.
warnings.filterwarnings("ignore", message="DSA is deprecated",
                        category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)")
