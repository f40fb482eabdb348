/** The broker's token answer, and the `AccessToken` it becomes. */

import { BrokerError } from "./errors.js";

type JsonKind = "string" | "integer" | "boolean" | "array<string>";

/**
 * The token answer (openapi.yaml `components.schemas.Token`) as this client reads it: each
 * field's JSON type and whether the broker always sends it. Every field is checked against
 * it before use, and {@link TokenResponse} is derived from it, so the type, the check and
 * tests/test_client_contract.py (which holds it to the spec) cannot disagree.
 */
export const TOKEN_FIELDS = {
  access_token: { type: "string", required: true },
  token_type: { type: "string", required: true },
  expires_at: { type: "string", required: false },
  expires_in: { type: "integer", required: false },
  token_kind: { type: "string", required: false },
  hub_id: { type: "integer", required: true },
  user_id: { type: "integer", required: false },
  app: { type: "string", required: true },
  scopes: { type: "array<string>", required: true },
  degraded: { type: "boolean", required: true },
} as const satisfies Record<string, { type: JsonKind; required: boolean }>;

type Fields = typeof TOKEN_FIELDS;
type TsType<K extends JsonKind> = K extends "string"
  ? string
  : K extends "integer"
    ? number
    : K extends "boolean"
      ? boolean
      : string[];
type RequiredNames = { [N in keyof Fields]: Fields[N]["required"] extends true ? N : never }[keyof Fields];
type OptionalNames = Exclude<keyof Fields, RequiredNames>;

/** The JSON body of a 200 answer from `GET /v1/portals/{hub_id}/token`. */
export type TokenResponse = { [N in RequiredNames]: TsType<Fields[N]["type"]> } & {
  [N in OptionalNames]?: TsType<Fields[N]["type"]>;
};

/** `token_kind` of a static token (a private app's), answered without `expires_in`. */
export const STATIC_KIND = "private_app";
/** How long a static token is kept in the client's cache before the broker is asked again. */
export const STATIC_TOKEN_SECONDS = 300;

/** Seconds the client may use the token for: `expires_in`, or a static token's re-ask delay. */
export function lifetimeOf(body: TokenResponse): number {
  return body.expires_in ?? STATIC_TOKEN_SECONDS;
}

/** A HubSpot access token for one portal. `toJSON`/`toString` hide the token itself. */
export class AccessToken {
  readonly #accessToken: string;
  /** On this machine's clock: when the request was sent plus `expires_in`, never later. */
  readonly expiresAt: Date;
  readonly hubId: number;
  readonly app: string;
  readonly scopes: readonly string[];
  readonly userId: number | null;
  /** The broker could not satisfy min_ttl (refreshing failed) and served a still-valid token. */
  readonly degraded: boolean;
  /** `"oauth"` (expires, refreshed by the broker) or `"private_app"` (static: no expiry). */
  readonly tokenKind: string;

  constructor(body: TokenResponse, sentAt: number) {
    this.#accessToken = body.access_token;
    this.expiresAt = new Date(sentAt + lifetimeOf(body) * 1000);
    this.hubId = body.hub_id;
    this.app = body.app;
    this.scopes = Object.freeze([...body.scopes]);
    this.userId = body.user_id ?? null;
    this.degraded = body.degraded;
    this.tokenKind = body.token_kind ?? "oauth";
  }

  /** The bearer token to send to HubSpot. */
  get accessToken(): string {
    return this.#accessToken;
  }

  /** Seconds this token stays valid by this machine's wall clock (negative: expired). */
  remaining(): number {
    return (this.expiresAt.getTime() - Date.now()) / 1000;
  }

  toJSON(): Record<string, unknown> {
    return {
      expiresAt: this.expiresAt.toISOString(),
      hubId: this.hubId,
      app: this.app,
      scopes: this.scopes,
      userId: this.userId,
      degraded: this.degraded,
      tokenKind: this.tokenKind,
    };
  }

  toString(): string {
    return `AccessToken(hubId=${this.hubId}, app=${this.app})`;
  }
}

function isKind(kind: JsonKind, value: unknown): boolean {
  switch (kind) {
    case "string":
      return typeof value === "string";
    case "integer": // a count or an id
      return Number.isSafeInteger(value) && (value as number) >= 0;
    case "boolean":
      return typeof value === "boolean";
    case "array<string>":
      return Array.isArray(value) && value.every((item) => typeof item === "string");
  }
}

/**
 * Check a 200 body against {@link TOKEN_FIELDS}. Only field names are ever put in the error
 * thrown for a malformed body, never values.
 */
export function parseTokenBody(body: unknown, status: number, requestId: string | null): TokenResponse {
  const invalid = (detail: string) =>
    new BrokerError(`the broker's answer is not a token: ${detail}`, {
      status,
      code: "invalid_response",
      requestId,
    });
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw invalid("not a JSON object");
  }
  const fields = body as Record<string, unknown>;
  for (const [name, spec] of Object.entries(TOKEN_FIELDS)) {
    const value = fields[name];
    if ((value !== undefined && value !== null) || spec.required) {
      if (!isKind(spec.type, value)) throw invalid(`${name} is not ${spec.type}`);
    }
  }
  if (fields["access_token"] === "") throw invalid("access_token is empty");
  // Only a static token (a private app's) comes without an expiry.
  if ((fields["expires_in"] ?? null) === null && fields["token_kind"] !== STATIC_KIND) {
    throw invalid("expires_in is not integer");
  }
  return fields as TokenResponse;
}
