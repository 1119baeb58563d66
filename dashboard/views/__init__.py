"""State-bound views: they wire state vars and event handlers into components."""
