"""pushgw test suite."""
