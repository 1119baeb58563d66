"""The operations every surface calls: one function per action, the only place its rules live."""
