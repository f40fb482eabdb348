/**
 * The TypeScript client for hubspot-token-broker: HubSpot access tokens for Node services.
 *
 *     const broker = new BrokerClient({ baseUrl: "http://broker:8080", credentials: key, app: "my-app" });
 *     const token = await broker.token(12345678);          // cached until min_ttl is at risk
 *     const hubspot = authorizedFetch(broker, 12345678);   // fetch + Bearer + one 401 retry
 *     await hubspot("https://api.hubapi.com/crm/v3/objects/contacts");
 */

export {
  BrokerClient,
  type BrokerClientOptions,
  type Credentials,
  type RetryPolicy,
  type TokenOptions,
} from "./client.js";
export {
  BrokerError,
  BrokerUnavailable,
  InvalidRequest,
  NeedsReauth,
  PortalNotFound,
  PortalRevoked,
  PROBLEM_CODES,
  Quarantined,
  RateLimited,
  ServerError,
  Unauthorized,
  classify,
  errorFromProblem,
  type ErrorClass,
  type ErrorFields,
} from "./errors.js";
export { authorizedFetch, renewalMinTtl, type AuthorizedFetchOptions, type FetchLike } from "./fetch.js";
export { AccessToken, STATIC_KIND, STATIC_TOKEN_SECONDS, TOKEN_FIELDS, type TokenResponse } from "./token.js";
