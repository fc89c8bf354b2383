"""The web console: server-rendered pages over the API's own service functions, mounted at
``/ui`` by `skillstore.server.create_app` (what `skillstore serve` runs)."""
