"""The REST API (`/v1`), a Starlette app mounted into the Reflex backend."""
