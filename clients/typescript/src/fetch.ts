/** `authorizedFetch`: a fetch that signs HubSpot API calls with a broker token. */

import type { BrokerClient } from "./client.js";
import type { AccessToken } from "./token.js";

/**
 * After a 401 the token is asked for again with this much more life than the rejected one
 * had left, so neither this client's cache nor the broker's can hand back the same token.
 */
const RENEW_MARGIN = 60;

/** The `minTtl` that makes the broker return a token other than `rejected` (clamped to
 * the broker's cap: a token with more than the cap left cannot be forced out). */
export function renewalMinTtl(rejected: AccessToken, minTtl: number): number {
  return Math.max(minTtl, Math.ceil(Math.max(0, rejected.remaining())) + RENEW_MARGIN);
}

export interface AuthorizedFetchOptions {
  app?: string;
  userId?: number;
  minTtl?: number;
  /** The fetch that reaches HubSpot (default: the global one). */
  fetch?: typeof fetch;
}

export type FetchLike = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

/**
 * A fetch-compatible function that sets `Authorization: Bearer <token>` from the broker
 * client's cache on every request to HubSpot.
 *
 * When HubSpot answers 401 the token is dead before its time (the app was uninstalled, the
 * portal reinstalled, a clock is off): the token is dropped from the cache, a token
 * outliving it is asked for (which makes the broker re-read or refresh; lowered to the
 * broker's `min_ttl` cap, which the client learns), and the request is sent once more. If
 * the broker can only return the same token the 401 is returned as is; if it finds the
 * grant dead, its error ({@link NeedsReauth}, ...) is thrown.
 */
export function authorizedFetch(
  client: BrokerClient,
  hubId: number,
  options: AuthorizedFetchOptions = {},
): FetchLike {
  const send = options.fetch ?? globalThis.fetch;
  const which = {
    ...(options.app !== undefined && { app: options.app }),
    ...(options.userId !== undefined && { userId: options.userId }),
  };
  return async (input, init) => {
    const request = new Request(input, init);
    const spare = request.clone(); // the body, once more, for the one retry
    const token = await client.token(hubId, {
      ...which,
      ...(options.minTtl !== undefined && { minTtl: options.minTtl }),
    });
    const first = await send(signed(request, token));
    if (first.status !== 401) return first;
    client.invalidate(hubId, { ...which, token });
    const minTtl = renewalMinTtl(token, options.minTtl ?? client.defaultMinTtl);
    const fresh = await client.token(hubId, { ...which, minTtl, clamp: true });
    if (fresh.accessToken === token.accessToken) return first;
    await first.body?.cancel();
    return send(signed(spare, fresh));
  };
}

function signed(request: Request, token: AccessToken): Request {
  const headers = new Headers(request.headers);
  headers.set("authorization", `Bearer ${token.accessToken}`);
  return new Request(request, { headers });
}
