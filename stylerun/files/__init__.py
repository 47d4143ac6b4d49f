"""Files on disk: atomic writes, advisory locks, and bounds for reading untrusted files."""
