"""The worker fleet: planning, sending and accounting of accepted pushes."""
