"""Development tools: the HubSpot simulator and the embedded dev stack."""
