"""HTTP interface (Starlette): routes, authentication, problem+json rendering."""
