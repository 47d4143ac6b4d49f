"""Files on disk, knowing nothing of what they hold: atomic writes, advisory locks, content hashes, and
generic bounds for reading untrusted files (regular-file checks, capped zip, npy and pickle reads)."""
