"""The Redis protocol of omnitask: key schema, atomic transitions and the client running them."""
