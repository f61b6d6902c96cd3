"""The device link: the device socket and everything only it needs (docs/architecture.md)."""
