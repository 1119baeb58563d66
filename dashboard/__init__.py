"""Every operator surface: the Reflex app, the REST API (api/) and the CLI (cli/)."""
