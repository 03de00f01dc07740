"""Token attribution methods (being implemented; see issue 13)."""
