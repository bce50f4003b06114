"""``wgrelay demo``: show a relay path working, for real, with what this host allows."""
