"""Apps that the tests run real workers on."""
