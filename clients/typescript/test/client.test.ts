/**
 * The client against a real broker (real Postgres, Valkey, OpenBao) and the HubSpot
 * simulator, both started by tests/test_typescript_client.py, which sets these variables:
 *
 *   BROKER_URL, BROKER_KEY     the broker and a caller key for its app `demo`
 *   SIM_URL                    the simulator (HubSpot's API and its /_sim control API)
 *   INSTALL_LINK               a signed install link for `demo`
 *   MIN_TTL_MAX                the broker's BROKER_MIN_TTL_MAX (lowered from 1500)
 *   HUB                        installed, tokens of 1800 s
 *   HUB_SHORT                  installed with a 600 s token (refreshes give 1800 s)
 *   HUB_AUTH                   installed with a token just under MIN_TTL_MAX
 *   HUB_REVOKED, HUB_DEAD      revoked; grant killed at HubSpot with the token expired
 *   HUB_PRIVATE                the private app `priv`'s portal (a static token), read
 *                              with BROKER_KEY_PRIVATE
 *
 * Requests to the broker are counted by wrapping the real fetch, so "served from the cache"
 * means "no request left this process".
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  AccessToken,
  BrokerClient,
  BrokerError,
  InvalidRequest,
  NeedsReauth,
  PortalNotFound,
  PortalRevoked,
  Unauthorized,
  authorizedFetch,
  type BrokerClientOptions,
} from "../src/index.js";

function env(name: string): string {
  const value = process.env[name];
  assert.ok(value, `${name} is not set: run this through tests/test_typescript_client.py`);
  return value;
}

const BROKER_URL = env("BROKER_URL");
const KEY = env("BROKER_KEY");
const SIM_URL = env("SIM_URL");
const MIN_TTL_MAX = Number(env("MIN_TTL_MAX"));
const HUB = Number(env("HUB"));

class Counted {
  requests = 0;
  readonly fetch: typeof fetch = (input, init) => {
    this.requests += 1;
    return fetch(input, init);
  };
}

function client(counted: Counted, options: Partial<BrokerClientOptions> = {}): BrokerClient {
  return new BrokerClient({
    baseUrl: BROKER_URL,
    credentials: KEY,
    app: "demo",
    fetch: counted.fetch,
    ...options,
  });
}

async function sim(method: string, path: string, body?: object): Promise<unknown> {
  const response = await fetch(`${SIM_URL}/_sim${path}`, {
    method,
    headers: { "content-type": "application/json" },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  });
  assert.ok(response.ok, `simulator ${method} ${path}: ${response.status}`);
  return response.json();
}

async function contactsCalls(): Promise<number> {
  const answer = (await sim("GET", "/counters")) as { counters: Record<string, number> };
  return answer.counters["contacts"] ?? 0;
}

/** The browser's install flow (auto consent at the simulator), cookies carried by hand. */
async function install(hubId: number, accessTokenTtl: number): Promise<void> {
  await sim("POST", "/config", {
    consent: "auto",
    consent_hub_id: hubId,
    access_token_ttl: accessTokenTtl,
  });
  const cookies = new Map<string, string>();
  let url = env("INSTALL_LINK");
  for (let hop = 0; hop < 10; hop++) {
    const cookie = [...cookies].map(([name, value]) => `${name}=${value}`).join("; ");
    const response = await fetch(url, { redirect: "manual", headers: cookie ? { cookie } : {} });
    for (const line of response.headers.getSetCookie()) {
      const [pair = ""] = line.split(";");
      const at = pair.indexOf("=");
      cookies.set(pair.slice(0, at), pair.slice(at + 1));
    }
    await response.body?.cancel();
    const location = response.headers.get("location");
    if (response.status >= 300 && response.status < 400 && location !== null) {
      url = new URL(location, url).href;
      continue;
    }
    assert.equal(response.status, 200, `install of ${hubId} ended at ${url}`);
    return;
  }
  assert.fail("the install flow did not end");
}

async function introspect(token: AccessToken): Promise<Record<string, unknown>> {
  const response = await fetch(`${SIM_URL}/oauth/v1/access-tokens/${token.accessToken}`);
  assert.equal(response.status, 200);
  return (await response.json()) as Record<string, unknown>;
}

async function rejects<E extends BrokerError>(
  promise: Promise<unknown>,
  cls: new (...args: never[]) => E,
): Promise<E> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof cls, `expected ${cls.name}, got ${String(error)}`);
    assert.ok(!String(error).includes(KEY), "the caller key leaked into an error");
    assert.ok(!JSON.stringify(error).includes(KEY), "the caller key leaked into an error");
    return error;
  }
  assert.fail(`expected ${cls.name}, got a token`);
}

test("a token is fetched once, then served from the cache", async () => {
  const counted = new Counted();
  const broker = client(counted);
  const token = await broker.token(HUB);
  assert.equal(token.hubId, HUB);
  assert.equal(token.app, "demo");
  assert.equal(token.userId, null);
  assert.ok(token.scopes.includes("crm.objects.contacts.read"));
  assert.ok(token.remaining() > 1700 && token.remaining() <= 1800, String(token.remaining()));
  const info = await introspect(token);
  assert.equal(info["hub_id"], HUB);
  assert.ok(!JSON.stringify(token).includes(token.accessToken));
  assert.ok(!String(token).includes(token.accessToken));

  assert.equal(await broker.token(HUB), token);
  assert.equal(await broker.token(HUB, { minTtl: 1000 }), token);
  assert.equal(counted.requests, 1);
  broker.invalidate(HUB);
  assert.equal((await broker.token(HUB)).accessToken, token.accessToken);
  assert.equal(counted.requests, 2);
});

test("a private app's static token is served from the cache at the default minTtl", async () => {
  const counted = new Counted();
  const broker = client(counted, { credentials: env("BROKER_KEY_PRIVATE"), app: "priv" });
  const hub = Number(env("HUB_PRIVATE"));
  const token = await broker.token(hub);
  assert.equal(token.tokenKind, "private_app");
  assert.equal(await broker.token(hub), token); // re-asked only after STATIC_TOKEN_SECONDS
  assert.equal(await broker.token(hub, { minTtl: 1000 }), token); // it does not expire
  assert.equal(counted.requests, 1);
});

test("concurrent callers of one portal share one request", async () => {
  const counted = new Counted();
  const broker = client(counted);
  const tokens = await Promise.all(Array.from({ length: 8 }, () => broker.token(HUB)));
  assert.equal(new Set(tokens).size, 1);
  assert.equal(counted.requests, 1);
});

test("a min_ttl beyond the cached token's life makes the broker refresh", async () => {
  const counted = new Counted();
  const broker = client(counted);
  const hub = Number(env("HUB_SHORT"));
  const short = await broker.token(hub);
  assert.ok(short.remaining() <= 600, String(short.remaining()));
  const longer = await broker.token(hub, { minTtl: 700 });
  assert.equal(counted.requests, 2);
  assert.notEqual(longer.accessToken, short.accessToken);
  assert.ok(longer.remaining() > 1700, String(longer.remaining()));
  assert.equal(await broker.token(hub), longer);
  assert.equal(counted.requests, 2);
});

test("broker answers become typed errors", async () => {
  const counted = new Counted();
  const broker = client(counted);

  const missing = await rejects(broker.token(999), PortalNotFound);
  assert.deepEqual([missing.status, missing.code], [404, "portal_not_found"]);
  assert.ok(missing.requestId);

  const revoked = await rejects(broker.token(Number(env("HUB_REVOKED"))), PortalRevoked);
  assert.deepEqual([revoked.status, revoked.code], [410, "revoked"]);

  const dead = await rejects(broker.token(Number(env("HUB_DEAD")), { minTtl: 0 }), NeedsReauth);
  assert.deepEqual([dead.status, dead.code], [409, "needs_reauth"]);

  const invalid = await rejects(broker.token(HUB, { minTtl: 99_999 }), InvalidRequest);
  assert.deepEqual([invalid.status, invalid.code], [422, "invalid_request"]);
  assert.equal(invalid.minTtlMax, MIN_TTL_MAX);
  assert.ok(invalid.detail.includes("min_ttl"));

  const badKey = "hsb_0123456789abcdef_" + "A".repeat(43);
  const stranger = client(counted, { credentials: () => badKey });
  const unauthenticated = await rejects(stranger.token(HUB), Unauthorized);
  assert.deepEqual([unauthenticated.status, unauthenticated.code], [401, "unauthenticated"]);
  assert.ok(!String(unauthenticated).includes(badKey));
  assert.equal(unauthenticated.retryAfter, null);

  // One request each: no 4xx is retried.
  assert.equal(counted.requests, 5);
});

test("the min_ttl cap is learned from the broker", async () => {
  const counted = new Counted();
  const broker = client(counted);
  assert.equal(broker.minTtlMax, null);
  const token = await broker.token(HUB, { minTtl: 99_999, clamp: true });
  assert.equal(broker.minTtlMax, MIN_TTL_MAX);
  assert.ok(token.remaining() >= MIN_TTL_MAX - 5);
  assert.equal(counted.requests, 2); // refused with the cap, then asked within it
  assert.equal(await broker.token(HUB, { minTtl: 99_999, clamp: true }), token);
  assert.equal(counted.requests, 2); // known now: the cached token satisfies the cap
  await rejects(broker.token(HUB, { minTtl: 99_999 }), InvalidRequest); // explicit: an error
});

test("authorizedFetch renews a token HubSpot rejects, within the learned cap", async () => {
  const counted = new Counted();
  const broker = client(counted);
  const hub = Number(env("HUB_AUTH"));
  const hubspot = authorizedFetch(broker, hub);
  const before = await contactsCalls();
  const ok = await hubspot(`${SIM_URL}/crm/v3/objects/contacts`);
  assert.equal(ok.status, 200);
  assert.ok(((await ok.json()) as { results: unknown[] }).results.length > 0);
  const first = await broker.token(hub);
  // Uninstall (kills every token) and install again: the broker holds a new grant while
  // this client still caches the dead token, which has just under MIN_TTL_MAX left.
  await sim("POST", `/portals/${hub}/kill`, {});
  await install(hub, 1800);

  const contacts = await hubspot(`${SIM_URL}/crm/v3/objects/contacts`);
  assert.equal(contacts.status, 200, await contacts.clone().text());
  assert.equal(await contactsCalls(), before + 3); // 200, the 401, the retried 200
  const renewed = await broker.token(hub);
  assert.notEqual(renewed.accessToken, first.accessToken);
  assert.equal((await introspect(renewed))["hub_id"], hub);
  // The retry wanted the dead token's life + 60 s, above the cap: one 422, then within it.
  assert.equal(broker.minTtlMax, MIN_TTL_MAX);
  assert.equal(counted.requests, 3);
});

test("authorizedFetch returns the 401 when the broker can only give the same token", async () => {
  const counted = new Counted();
  const broker = client(counted);
  const hub = Number(env("HUB_AUTH"));
  const token = await broker.token(hub); // the renewed one: about 1800 s left, above the cap
  const hubspot = authorizedFetch(broker, hub);
  await sim("POST", `/portals/${hub}/kill`, {}); // uninstalled, not installed again
  const before = await contactsCalls();
  const rejected = await hubspot(`${SIM_URL}/crm/v3/objects/contacts`);
  // No token outliving the cap can be forced out: the broker still serves the dead one, so
  // the request is not sent again and HubSpot's 401 comes back as is.
  assert.equal(rejected.status, 401);
  assert.equal(await contactsCalls(), before + 1);
  assert.equal((await broker.token(hub)).accessToken, token.accessToken);
  assert.equal(counted.requests, 3); // the token, the 422 naming the cap, the clamped ask
});

test("a closed client refuses to be used", async () => {
  const broker = client(new Counted());
  await broker.token(HUB);
  broker.close();
  assert.ok(broker.closed);
  await assert.rejects(broker.token(HUB), /closed/);
});
