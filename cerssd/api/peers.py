"""What the control API does for peer daemons (docs/peers.md): on the managing side,
refuse work to a peer that cannot take it before an activity is made; on the peer's
side, answer a delegating daemon's repeated create with the activity it already made.
"""

from __future__ import annotations

from ..activity import ActivityRecord
from ..engine import ActivityEngine
from ..peers.client import PeerClient, PeerRefused, PeerVersionMismatch
from ..transport.errors import LinkError
from .problems import ApiProblem


def child_of(engine: ActivityEngine, kind: str, parent: str) -> ActivityRecord | None:
    """The live activity of ``kind`` that a delegating daemon's activity ``parent``
    already started here (only live ones are looked at: a handful)."""
    return next((a.snapshot() for a in engine.live(kind)
                 if a.record.params.get("peer_parent") == parent), None)


async def check_peer(peer: PeerClient) -> None:
    """Refuse delegated work now (409) to a peer whose version differs or that refuses
    our SSH user; an unreachable peer is not refused: the activity retries."""
    try:
        await peer.check_version()
    except (PeerVersionMismatch, PeerRefused) as exc:
        code = "peer-version" if isinstance(exc, PeerVersionMismatch) else "peer-refused"
        raise ApiProblem(409, "Peer Daemon Refused", str(exc), code=code) from exc
    except LinkError:
        pass
