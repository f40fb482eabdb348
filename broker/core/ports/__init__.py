"""Ports: what the use cases need from the outside world, and the contract each must keep.

Adapters in ``broker.adapters`` implement these; ``broker.app`` wires them. ``core`` never
imports an adapter, a driver or a framework.

The lease contract (Postgres is the authority, Redis only keeps replicas from piling up):

* A :class:`Lease` is granted by :meth:`PortalRepository.claim_lease` on the *database clock*
  for ``lease_seconds``. Its ``epoch`` is strictly greater than every epoch granted before for
  that portal.
* The holder must finish every step that depends on the lease (Vault, HubSpot, the journal,
  the fenced write) before the lease runs out. It self-fences: it does not call HubSpot unless
  the remaining lease covers the HubSpot timeout plus a database round trip.
* A lease is *lost* when its time runs out or anything unexpected happens while holding it.
  A lost lease is never extended or assumed: the holder's fenced write simply updates zero
  rows, and the token response it got is kept in the journal.
* The Redis lock (:meth:`Coordinator.try_lock`) is advisory only: it may expire under a
  paused holder or vanish in a failover, so correctness never depends on it.
"""

from __future__ import annotations

from broker.core.ports.apps import AppRepository
from broker.core.ports.audit import AuditEvent, AuditFilter, AuditPosition, AuditSink
from broker.core.ports.browse import (
    PortalPage,
    PortalQuery,
    PortalSearch,
    PortalTimeline,
    TimelineCursor,
    TimelineEntry,
    TimelinePage,
)
from broker.core.ports.coordination import Coordinator, RateLimiter
from broker.core.ports.events import (
    DeliveryRecord,
    EventFilter,
    EventLog,
    EventRecord,
    Outbox,
    OutboxEvent,
    OutboxStats,
    WebhookSender,
)
from broker.core.ports.hubspot import OAuthProvider
from broker.core.ports.hubspot_api import ApiRequest, ApiResponse, HubSpotApi
from broker.core.ports.identity import (
    CallerRepository,
    ChangedCallers,
    Identity,
    IdentityProvider,
    IdentityVerifier,
    SsoIdentity,
)
from broker.core.ports.install_links import InstallLinkStore
from broker.core.ports.leases import DueLease, JournalEntry, LeaseRepository
from broker.core.ports.portals import (
    EncryptedGrant,
    PortalRepository,
    RevokedPortal,
    StoppedPortals,
)
from broker.core.ports.private_apps import PrivatePortals, PrivateTokenStore
from broker.core.ports.retention import RetentionStore
from broker.core.ports.revocations import PendingRevocation, RevocationQueue
from broker.core.ports.vault import (
    Cipher,
    CiphertextStore,
    KeySchedule,
    KeyStore,
    KeyVersions,
    MacService,
    Retirement,
    SecretStore,
    StoredCiphertext,
)

__all__ = [
    "ApiRequest",
    "ApiResponse",
    "AppRepository",
    "AuditEvent",
    "AuditFilter",
    "AuditPosition",
    "AuditSink",
    "CallerRepository",
    "ChangedCallers",
    "Cipher",
    "CiphertextStore",
    "Coordinator",
    "DeliveryRecord",
    "DueLease",
    "EncryptedGrant",
    "EventFilter",
    "EventLog",
    "EventRecord",
    "HubSpotApi",
    "Identity",
    "IdentityProvider",
    "IdentityVerifier",
    "InstallLinkStore",
    "JournalEntry",
    "KeySchedule",
    "KeyStore",
    "KeyVersions",
    "LeaseRepository",
    "MacService",
    "OAuthProvider",
    "Outbox",
    "OutboxEvent",
    "OutboxStats",
    "PendingRevocation",
    "PortalPage",
    "PortalQuery",
    "PortalRepository",
    "PortalSearch",
    "PortalTimeline",
    "PrivatePortals",
    "PrivateTokenStore",
    "RateLimiter",
    "RetentionStore",
    "Retirement",
    "RevocationQueue",
    "RevokedPortal",
    "SecretStore",
    "SsoIdentity",
    "StoppedPortals",
    "StoredCiphertext",
    "TimelineCursor",
    "TimelineEntry",
    "TimelinePage",
    "WebhookSender",
]
