/** `BrokerClient`: HubSpot access tokens from the broker, cached in memory. */

import {
  BrokerError,
  BrokerUnavailable,
  InvalidRequest,
  RateLimited,
  Unauthorized,
  errorFromProblem,
  errorFromTransport,
} from "./errors.js";
import { AccessToken, STATIC_KIND, lifetimeOf, parseTokenBody } from "./token.js";

/** The caller key, or a function returning it, called before every request to the broker. */
export type Credentials = string | (() => string | Promise<string>);

/**
 * Retries of one `token()` call. Only {@link BrokerUnavailable} and {@link RateLimited} are
 * retried; the wait is the broker's `Retry-After`, else a jittered exponential backoff from
 * `backoff` seconds. A wait that would take the call past `maxWait` seconds of sleeping in
 * total is not made: the error is thrown at once with its `retryAfter`.
 */
export interface RetryPolicy {
  retries: number;
  maxWait: number;
  backoff: number;
}

export interface BrokerClientOptions {
  /** The broker's base URL, e.g. `http://broker:8080`. */
  baseUrl: string;
  credentials: Credentials;
  /** The app used when a call names none (unset: the broker's default app). */
  app?: string;
  /** Seconds a token must have left when a call names no `minTtl` (default 300). */
  defaultMinTtl?: number;
  /** Seconds to wait for one answer from the broker (default 5). */
  timeout?: number;
  retry?: Partial<RetryPolicy>;
  /** The fetch to reach the broker with (default: the global one). */
  fetch?: typeof fetch;
}

export interface TokenOptions {
  app?: string;
  userId?: number;
  /** Seconds the token must stay valid (default: the client's `defaultMinTtl`). */
  minTtl?: number;
  /**
   * Lower a `minTtl` above the broker's cap (`BROKER_MIN_TTL_MAX`) to the cap instead of
   * throwing {@link InvalidRequest}. The default `minTtl` is always lowered.
   */
  clamp?: boolean;
}

const USER_AGENT = "hubspot-token-broker-client-ts/0.1";

class Entry {
  constructor(
    readonly token: AccessToken,
    /** `performance.now()` (ms) at which the token expires, at the latest. */
    readonly deadline: number,
  ) {}

  satisfies(minTtl: number): boolean {
    // A static token (a private app's) does not expire: its deadline is only when to ask
    // the broker again, so until then it has any minTtl left.
    if (this.token.tokenKind === STATIC_KIND) return this.deadline > performance.now();
    return this.deadline - performance.now() >= minTtl * 1000;
  }
}

function checkInt(name: string, value: unknown, minimum: number): number {
  if (!Number.isSafeInteger(value)) throw new TypeError(`${name} must be an integer`);
  if ((value as number) < minimum) throw new RangeError(`${name} must be >= ${minimum}`);
  return value as number;
}

const sleep = (seconds: number) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

/**
 * Gets HubSpot access tokens from the broker and caches them in memory.
 *
 * A token is served from the cache while it has `minTtl` seconds left; otherwise the broker
 * is asked, and concurrent calls for the same portal share that one request. The broker's
 * `min_ttl` cap is learned from its 422 ({@link minTtlMax}). After {@link close} every call
 * throws.
 */
export class BrokerClient {
  readonly #baseUrl: string;
  readonly #credentials: Credentials;
  readonly #app: string | undefined;
  readonly #timeout: number;
  readonly #retry: RetryPolicy;
  readonly #fetch: typeof fetch;
  readonly #cache = new Map<string, Entry>();
  readonly #flights = new Map<string, Promise<Entry>>();
  #minTtlMax: number | null = null;
  #closed = false;
  readonly defaultMinTtl: number;

  constructor(options: BrokerClientOptions) {
    const url = new URL(options.baseUrl);
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new TypeError("baseUrl must be an http:// or https:// URL");
    }
    if (typeof options.credentials === "string" && !options.credentials.trim()) {
      throw new TypeError("credentials must be a caller key or a function returning one");
    }
    this.#baseUrl = url.href.replace(/\/+$/, "");
    this.#credentials = options.credentials;
    this.#app = options.app;
    this.defaultMinTtl = checkInt("defaultMinTtl", options.defaultMinTtl ?? 300, 0);
    this.#timeout = options.timeout ?? 5;
    this.#retry = { retries: 2, maxWait: 2, backoff: 0.1, ...options.retry };
    this.#fetch = options.fetch ?? globalThis.fetch;
  }

  /**
   * The broker's largest allowed `min_ttl` (its `BROKER_MIN_TTL_MAX`), once learned: null
   * until the broker refused a `min_ttl` as too large (its 422 names the maximum), so
   * learning it costs nothing while no call asks for more.
   */
  get minTtlMax(): number | null {
    return this.#minTtlMax;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * A token for `hubId` valid for at least `minTtl` seconds. Throws a {@link BrokerError}
   * subclass when the broker says no. While HubSpot is failing the broker may serve a
   * still-valid token with less than `minTtl` left (`degraded`); it is returned as is.
   */
  async token(hubId: number, options: TokenOptions = {}): Promise<AccessToken> {
    this.#checkOpen();
    checkInt("hubId", hubId, 1); // it goes into the URL path
    if (options.userId !== undefined) checkInt("userId", options.userId, 1);
    const app = options.app ?? this.#app;
    let clamp = options.clamp ?? false;
    let requested = options.minTtl;
    if (requested === undefined) [requested, clamp] = [this.defaultMinTtl, true];
    checkInt("minTtl", requested, 0);
    const key = cacheKey(hubId, app, options.userId);
    for (;;) {
      const minTtl = this.#capped(requested, clamp);
      const cached = this.#fresh(key, minTtl);
      if (cached !== undefined) return cached.token;
      let flight = this.#flights.get(key);
      const leader = flight === undefined;
      if (flight === undefined) {
        const started: Promise<Entry> = this.#ask(key, hubId, app, options.userId, minTtl, clamp);
        flight = started.finally(() => {
          if (this.#flights.get(key) === flight) this.#flights.delete(key);
        });
        this.#flights.set(key, flight);
      }
      const entry = await flight;
      if (leader || entry.satisfies(minTtl)) return entry.token;
      // The shared request asked for less than this call needs: go again.
    }
  }

  /**
   * Forget the cached token of a portal, so the next call asks the broker. With `token`,
   * only if it is still the cached one (a token another caller already replaced is kept).
   */
  invalidate(hubId: number, options: { app?: string; userId?: number; token?: AccessToken } = {}) {
    const key = cacheKey(hubId, options.app ?? this.#app, options.userId);
    const entry = this.#cache.get(key);
    if (entry !== undefined && (options.token === undefined || entry.token === options.token)) {
      this.#cache.delete(key);
    }
  }

  /** Forget every cached token and refuse every later call. Idempotent. */
  close(): void {
    this.#closed = true;
    this.#cache.clear();
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error("Cannot get a token, as the client has been closed.");
  }

  #capped(minTtl: number, clamp: boolean): number {
    return clamp && this.#minTtlMax !== null ? Math.min(minTtl, this.#minTtlMax) : minTtl;
  }

  #fresh(key: string, minTtl: number): Entry | undefined {
    const entry = this.#cache.get(key);
    if (entry === undefined) return undefined;
    if (entry.deadline <= performance.now()) {
      this.#cache.delete(key); // no dead tokens linger in memory
      return undefined;
    }
    return entry.satisfies(minTtl) ? entry : undefined;
  }

  async #ask(
    key: string,
    hubId: number,
    app: string | undefined,
    userId: number | undefined,
    minTtl: number,
    clamp: boolean,
  ): Promise<Entry> {
    let waited = 0;
    for (let attempt = 0; ; ) {
      this.#checkOpen();
      let error: BrokerError;
      try {
        return await this.#once(key, hubId, app, userId, minTtl);
      } catch (caught) {
        if (!(caught instanceof BrokerError)) throw caught;
        error = caught;
      }
      if (error instanceof InvalidRequest && error.minTtlMax !== null) {
        this.#minTtlMax = error.minTtlMax;
        if (clamp && minTtl > error.minTtlMax) {
          minTtl = error.minTtlMax; // not a retry: a different request, sent at once
          continue;
        }
      }
      const delay = this.#delay(attempt, error, waited);
      if (delay === null) throw error;
      await sleep(delay);
      waited += delay;
      attempt += 1;
    }
  }

  #delay(attempt: number, error: BrokerError, waited: number): number | null {
    const transient = error instanceof BrokerUnavailable || error instanceof RateLimited;
    if (!transient || attempt >= this.#retry.retries) return null;
    const ceiling = this.#retry.backoff * 2 ** attempt;
    const wait = error.retryAfter ?? ceiling / 2 + Math.random() * (ceiling / 2);
    return waited + wait > this.#retry.maxWait ? null : wait;
  }

  async #once(
    key: string,
    hubId: number,
    app: string | undefined,
    userId: number | undefined,
    minTtl: number,
  ): Promise<Entry> {
    const query = new URLSearchParams({ min_ttl: String(minTtl) });
    if (app !== undefined) query.set("app", app);
    if (userId !== undefined) query.set("user_id", String(userId));
    const url = `${this.#baseUrl}/v1/portals/${hubId}/token?${query}`;
    const headers = {
      authorization: `Bearer ${await this.#callerKey()}`,
      accept: "application/json",
      "user-agent": USER_AGENT,
    };
    const sentAt = Date.now();
    const sentMono = performance.now();
    let response: Response;
    let text: string;
    try {
      response = await this.#fetch(url, {
        headers,
        redirect: "manual",
        signal: AbortSignal.timeout(this.#timeout * 1000),
      });
      text = await response.text();
    } catch (caught) {
      throw errorFromTransport(caught);
    }
    let body: unknown;
    if ((response.headers.get("content-type") ?? "").includes("json")) {
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined; // a 200 becomes invalid_response; an error is classified by status
      }
    }
    const requestId = response.headers.get("x-request-id");
    if (response.status !== 200) {
      throw errorFromProblem(response.status, response.statusText, response.headers, body);
    }
    const fields = parseTokenBody(body, response.status, requestId);
    if (fields.hub_id !== hubId) {
      // Never cache (or hand out) one portal's token under another portal's key.
      throw new BrokerError("the broker's answer is for another portal", {
        status: 200,
        code: "invalid_response",
        requestId,
      });
    }
    const entry = new Entry(new AccessToken(fields, sentAt), sentMono + lifetimeOf(fields) * 1000);
    const current = this.#cache.get(key);
    // Two answers may race: keep the one that lives longer.
    if (current === undefined || current.deadline <= entry.deadline) this.#cache.set(key, entry);
    return entry;
  }

  async #callerKey(): Promise<string> {
    const raw = typeof this.#credentials === "string" ? this.#credentials : await this.#credentials();
    if (typeof raw !== "string" || !raw.trim()) {
      // Never show the value: it may be a half-written key.
      throw new Unauthorized("the credentials gave no caller key", { code: "no_credentials" });
    }
    return raw.trim();
  }
}

function cacheKey(hubId: number, app: string | undefined, userId: number | undefined): string {
  return `${app ?? ""}/${hubId}/${userId ?? ""}`;
}
