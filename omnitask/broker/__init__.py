"""The Redis protocol of omnitask: key schema, atomic transitions and the one client that runs them."""
