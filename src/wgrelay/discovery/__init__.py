"""Finding relays without a central server: registry, announcements, queries."""
