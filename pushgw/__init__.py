"""pushgw: a Parse-compatible push gateway (intake, shared core and CLI)."""
