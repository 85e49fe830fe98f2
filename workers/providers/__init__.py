"""Delivery providers: one module per transport behind the Provider protocol."""
