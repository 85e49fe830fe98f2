"""The operator console: a small page served by `pushgw serve` behind an app's master key."""

from pushgw.console.routes import GatewayState, console_routes

__all__ = ["GatewayState", "console_routes"]
