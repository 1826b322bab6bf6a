"""Local stand-ins for outside systems: real servers that speak the real wire formats."""
