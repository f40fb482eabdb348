/**
 * Every error the broker client throws on purpose.
 *
 * Each failure to obtain a token is a {@link BrokerError} carrying what the broker said: the
 * HTTP `status` (`null` when no answer arrived), its stable machine-readable `code`, the human
 * `detail`, the broker's `requestId`, and `retryAfter` (seconds) when the broker sent one.
 * Messages never contain an access token or the caller key.
 *
 *     BrokerError          anything else, e.g. a malformed answer (`invalid_response`)
 *     ├── Unauthorized     401 unauthenticated, 403 forbidden: fix the key or its grants
 *     ├── InvalidRequest   422 invalid_request (`minTtlMax`: the broker's min_ttl cap)
 *     ├── PortalNotFound   404 portal_not_found, app_not_found
 *     ├── NeedsReauth      409 needs_reauth: the portal must be installed again
 *     ├── Quarantined      409 quarantined: an operator holds the portal
 *     ├── PortalRevoked    410 revoked
 *     ├── RateLimited      429 rate_limited, auth_throttled: wait `retryAfter`
 *     ├── BrokerUnavailable 502/503/504 or no answer: retry later
 *     └── ServerError      500 internal, token_undecryptable
 *
 * Only RateLimited and BrokerUnavailable are worth asking again; the client retries them
 * within its retry budget.
 */

const MAX_DETAIL = 500;

export interface ErrorFields {
  status?: number | null;
  code?: string;
  requestId?: string | null;
  retryAfter?: number | null;
}

export class BrokerError extends Error {
  readonly detail: string;
  readonly status: number | null;
  readonly code: string;
  readonly requestId: string | null;
  /** Seconds the broker asked to wait before asking again, when it said. */
  readonly retryAfter: number | null;

  constructor(detail: string, fields: ErrorFields = {}) {
    const short = detail.slice(0, MAX_DETAIL);
    const status = fields.status ?? null;
    const code = fields.code ?? "error";
    const requestId = fields.requestId ?? null;
    let where = `status=${status} code=${code}`;
    if (requestId !== null) where += ` request_id=${requestId}`;
    super(`${short} (${where})`);
    this.name = new.target.name;
    this.detail = short;
    this.status = status;
    this.code = code;
    this.requestId = requestId;
    this.retryAfter = fields.retryAfter ?? null;
  }
}

export class Unauthorized extends BrokerError {}

export class InvalidRequest extends BrokerError {
  /** The broker's largest allowed min_ttl, when the refused parameter was min_ttl. */
  readonly minTtlMax: number | null;

  constructor(detail: string, fields: ErrorFields & { minTtlMax?: number | null } = {}) {
    super(detail, fields);
    this.minTtlMax = fields.minTtlMax ?? null;
  }
}

export class PortalNotFound extends BrokerError {}
export class NeedsReauth extends BrokerError {}
export class Quarantined extends BrokerError {}
export class PortalRevoked extends BrokerError {}
export class RateLimited extends BrokerError {}
export class BrokerUnavailable extends BrokerError {}
export class ServerError extends BrokerError {}

export type ErrorClass = new (detail: string, fields?: ErrorFields) => BrokerError;

const UNAVAILABLE = [
  "upstream_unavailable",
  "hubspot_error",
  "hubspot_unavailable",
  "hubspot_rate_limited",
  "app_misconfigured",
  "refresh_outcome_unknown",
  "vault_unavailable",
  "vault_sealed",
  "vault_forbidden",
  "vault_login_failed",
  "encrypt_failed",
  "database_unavailable",
  "redis_unavailable",
  "lock_contention",
  "identity_provider_unavailable",
] as const;

/**
 * Every problem `code` the token route documents (openapi.yaml), with the class it becomes;
 * tests/test_client_contract.py holds this table to the spec.
 */
export const PROBLEM_CODES: Readonly<Record<string, ErrorClass>> = Object.freeze({
  unauthenticated: Unauthorized,
  forbidden: Unauthorized,
  invalid_request: InvalidRequest,
  portal_not_found: PortalNotFound,
  app_not_found: PortalNotFound,
  needs_reauth: NeedsReauth,
  quarantined: Quarantined,
  revoked: PortalRevoked,
  rate_limited: RateLimited,
  auth_throttled: RateLimited,
  internal: ServerError,
  token_undecryptable: ServerError,
  ...Object.fromEntries(UNAVAILABLE.map((code) => [code, BrokerUnavailable])),
});

/** A code the table does not know is classified by its status. */
const BY_STATUS: Readonly<Record<number, ErrorClass>> = {
  400: InvalidRequest,
  401: Unauthorized,
  403: Unauthorized,
  404: PortalNotFound,
  410: PortalRevoked,
  422: InvalidRequest,
  429: RateLimited,
  500: ServerError,
  502: BrokerUnavailable,
  503: BrokerUnavailable,
  504: BrokerUnavailable,
};

/** The class of a broker answer: by its problem code when documented, else by status. */
export function classify(status: number, code: string): ErrorClass {
  return (
    (Object.hasOwn(PROBLEM_CODES, code) ? PROBLEM_CODES[code] : undefined) ??
    BY_STATUS[status] ??
    BrokerError
  );
}

/** `Retry-After` as seconds (delta-seconds or an HTTP date); null when absent or bad. */
export function parseRetryAfter(value: string | null): number | null {
  if (value === null) return null;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text);
  const when = Date.parse(text);
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}

function minTtlMaxOf(body: Record<string, unknown>): number | null {
  const errors = body["errors"];
  if (!Array.isArray(errors)) return null;
  for (const item of errors as unknown[]) {
    if (typeof item !== "object" || item === null) continue;
    const entry = item as Record<string, unknown>;
    const maximum = entry["maximum"];
    if (entry["field"] === "min_ttl" && Number.isSafeInteger(maximum) && (maximum as number) >= 0) {
      return maximum as number;
    }
  }
  return null;
}

/**
 * The typed error for a non-2xx broker answer. Only the problem's `code`, `detail`,
 * `request_id` and `errors[].maximum` are read; the rest of the body is never echoed.
 */
export function errorFromProblem(
  status: number,
  statusText: string,
  headers: Headers,
  body: unknown,
): BrokerError {
  const problem =
    typeof body === "object" && body !== null && !Array.isArray(body)
      ? (body as Record<string, unknown>)
      : {};
  const rawCode = problem["code"];
  const code = typeof rawCode === "string" && rawCode ? rawCode : `http_${status}`;
  const rawDetail = problem["detail"];
  const detail =
    typeof rawDetail === "string" && rawDetail
      ? rawDetail
      : `the broker answered ${status} ${statusText}`.trimEnd();
  const rawId = problem["request_id"];
  const requestId = typeof rawId === "string" ? rawId : headers.get("x-request-id");
  const retryAfter = parseRetryAfter(headers.get("retry-after"));
  const cls = classify(status, code);
  if (cls === InvalidRequest) {
    return new InvalidRequest(detail, {
      status,
      code,
      requestId,
      retryAfter,
      minTtlMax: minTtlMaxOf(problem),
    });
  }
  return new cls(detail, { status, code, requestId, retryAfter });
}

/** No answer from the broker (connection refused, timeout). */
export function errorFromTransport(error: unknown): BrokerUnavailable {
  const name = error instanceof Error ? error.name : "Error";
  const unavailable = new BrokerUnavailable(`the broker could not be reached: ${name}`, {
    code: "unreachable",
  });
  unavailable.cause = error;
  return unavailable;
}
