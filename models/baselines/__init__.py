"""Classic codecs at a byte budget, one folder at a time."""
