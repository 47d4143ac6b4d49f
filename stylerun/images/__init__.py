"""Pictures in and out: decoding and encoding (codec), 16-bit and float files (deep), and colour handling."""
