"""Thin pages: the shell plus one view each."""
