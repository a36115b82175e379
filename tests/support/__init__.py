"""Helpers shared by every suite: the money invariants and a small API client."""
