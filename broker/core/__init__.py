"""Use cases and ports. Nothing here imports a driver, a framework or an adapter."""
