"""Reflex state: one class per panel, plain rows only (no ORM objects, no DB access)."""
