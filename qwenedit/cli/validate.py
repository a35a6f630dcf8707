"""`qwenedit validate` (to be written)."""
