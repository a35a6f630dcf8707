"""`qwenedit emulator` (to be written)."""
