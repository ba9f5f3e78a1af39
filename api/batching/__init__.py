"""Edge batching: gather the rows of concurrent requests, publish each batch as one message, route its reply."""
