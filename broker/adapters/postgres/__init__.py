"""PostgreSQL adapter (asyncpg): apps, portals, journal, callers, audit, outbox."""
