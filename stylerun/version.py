"""The version, in one place (the package, exports and the cache key read it)."""

__version__ = "0.1.0"
