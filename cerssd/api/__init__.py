"""The control API: aiohttp on a unix socket, JSON, problem documents, OpenAPI."""
