"""State-free components: they take plain values (or Vars) and return rx.Component."""
