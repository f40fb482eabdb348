// A real OpenID Provider for the operator page's SSO tests: panva's oidc-provider (an
// OpenID Certified implementation) over HTTPS on a loopback port, with a password login
// page of its own, the users of a JSON file, and clients the test registers at run time.
//
//   node server.mjs CONFIG.json     prints {"issuer": "https://127.0.0.1:PORT"} once ready
//
// CONFIG: {"cert": PEM path, "key": PEM path, "users": {id: {password, email, groups}}}.
// Test-only control routes (never part of OIDC, loopback only):
//   PUT  /__test/clients/ID   body: client metadata (redirect_uris, client_secret, ...)
//   POST /__test/id-token     body: claims the NEXT token response's ID token is re-signed
//                             with (with the provider's own key), e.g. {"aud": "other"}:
//                             a fault on the wire, as an IdP gone wrong would send.
import { readFileSync } from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';
import { SignJWT, decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair, importJWK } from 'jose';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await exportJWK(privateKey)), kid: 'test-key-1', alg: 'RS256', use: 'sig' };

// --- storage: a Map, so clients can be added while running ---------------------------------
const store = new Map();
class MemoryAdapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload) { store.set(this.key(id), payload); }
  async find(id) { return store.get(this.key(id)); }
  async findByUid(uid) {
    for (const [k, v] of store) if (k.startsWith(`${this.model}:`) && v.uid === uid) return v;
    return undefined;
  }
  async findByUserCode() { return undefined; }
  async consume(id) {
    const found = store.get(this.key(id));
    if (found) found.consumed = Math.floor(Date.now() / 1000);
  }
  async destroy(id) { store.delete(this.key(id)); }
  async revokeByGrantId(grantId) {
    for (const [k, v] of store) if (v.grantId === grantId) store.delete(k);
  }
}

const users = config.users;
const server = https.createServer({
  cert: readFileSync(config.cert),
  key: readFileSync(config.key),
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `https://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  adapter: MemoryAdapter,
  jwks: { keys: [signingJwk] },
  cookies: { keys: ['test-only-cookie-key-0123456789'] },
  features: { devInteractions: { enabled: false } },
  pkce: { required: () => true },
  // The groups claim in the ID token itself, as Okta and Keycloak send it.
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, id) => users[id] && {
    accountId: id,
    claims: async () => ({
      sub: id, email: users[id].email, email_verified: true, name: id, groups: users[id].groups,
    }),
  },
  // Consent is implied (an internal IdP's first-party client): grant what was asked.
  loadExistingGrant: async (ctx) => {
    const { Grant } = ctx.oidc.provider;
    const known = ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    const grant = (known && await Grant.find(known))
      || new Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.params.scope);
    await grant.save();
    return grant;
  },
});
const handle = provider.callback();

function body(req) {
  return new Promise((resolve, reject) => {
    let text = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { text += chunk; });
    req.on('end', () => resolve(text));
    req.on('error', reject);
  });
}

function loginPage(res, uid, problem) {
  res.writeHead(problem ? 401 : 200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><title>Test IdP sign-in</title><h1>Test IdP</h1>
${problem ? '<p id="problem">Wrong user name or password.</p>' : ''}
<form method="post" action="/interaction/${uid}/login">
<label>User <input id="login" name="login" autocomplete="off"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="sign-in" type="submit">Sign in</button></form>`);
}

let idTokenFault = null;

// Re-sign the ID token of one token response with the provider's key and changed claims.
function faulty(res, claims) {
  const end = res.end.bind(res);
  const chunks = [];
  res.write = (chunk) => { chunks.push(Buffer.from(chunk)); return true; };
  res.end = (chunk, ...rest) => {
    if (chunk) chunks.push(Buffer.from(chunk));
    const answer = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    if (!answer.id_token) return end(Buffer.concat(chunks), ...rest);
    const header = decodeProtectedHeader(answer.id_token);
    const payload = { ...decodeJwt(answer.id_token), ...claims };
    importJWK(signingJwk, 'RS256')
      .then((key) => new SignJWT(payload).setProtectedHeader(header).sign(key))
      .then((token) => {
        const text = JSON.stringify({ ...answer, id_token: token });
        res.setHeader('content-length', Buffer.byteLength(text));
        end(text);
      });
    return res;
  };
}

server.on('request', async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    const client = url.pathname.match(/^\/__test\/clients\/([\w-]+)$/);
    if (req.method === 'PUT' && client) {
      const metadata = { ...JSON.parse(await body(req)), client_id: client[1] };
      await new MemoryAdapter('Client').upsert(client[1], metadata);
      res.writeHead(204).end();
      return;
    }
    if (req.method === 'POST' && url.pathname === '/__test/id-token') {
      idTokenFault = JSON.parse(await body(req));
      res.writeHead(204).end();
      return;
    }
    const interaction = url.pathname.match(/^\/interaction\/([\w-]+)(\/login)?$/);
    if (interaction) {
      const details = await provider.interactionDetails(req, res);
      if (req.method === 'GET') {
        loginPage(res, details.uid, false);
        return;
      }
      const form = new URLSearchParams(await body(req));
      const user = users[form.get('login')];
      if (!user || user.password !== form.get('password')) {
        loginPage(res, details.uid, true);
        return;
      }
      await provider.interactionFinished(
        req, res, { login: { accountId: form.get('login') } }, { mergeWithLastSubmission: false },
      );
      return;
    }
    if (req.method === 'POST' && url.pathname === '/token' && idTokenFault) {
      faulty(res, idTokenFault);
      idTokenFault = null;
    }
    handle(req, res);
  } catch (error) {
    res.writeHead(500, { 'content-type': 'text/plain' }).end(String(error));
  }
});

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
