"""anchord: one LAN identity for one Docker Compose project."""

__version__ = "0.1.0"
