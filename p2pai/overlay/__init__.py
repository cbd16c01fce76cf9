"""The swarm's control plane: libp2p connections, LAN discovery and membership.

The node uses it through ``Overlay``; libp2p is imported only by
``Overlay.start`` (it costs 0.5 s), so importing this package stays cheap.
"""

from p2pai.overlay.membership import Member, MemberEvent
from p2pai.overlay.overlay import Overlay, OverlayConfig

__all__ = ["Member", "MemberEvent", "Overlay", "OverlayConfig"]
