"""The HTTP layer: envelopes, error mapping, API keys, request ids and the access log."""
