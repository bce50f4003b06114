"""The mesh side of wgrelay: WireGuard backends, NAT traversal, cache and agent."""
