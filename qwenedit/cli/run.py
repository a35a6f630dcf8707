"""`qwenedit run` (to be written)."""
