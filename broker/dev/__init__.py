"""Development tooling: real backends from pip wheels (:mod:`broker.dev.stack`), the HubSpot
simulator (:mod:`broker.dev.simulator`) and ``broker dev`` (:mod:`broker.dev.run`)."""
