"""wgrelay: decentralized TURN-style relays for WireGuard meshes."""

__version__ = "0.1.0"
