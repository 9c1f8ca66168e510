// A relying party written by someone else (panva's openid-client) against Tessera as an OpenID
// Provider: discovery, authorization code + PKCE through a real upstream sign-in, id token
// validation by the library, userinfo, refresh with rotation and reuse detection, introspection,
// revocation and RP-initiated logout. Exits non-zero, saying why, at the first surprise.
//
// Environment: TESSERA_ISSUER, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, POST_LOGOUT_URI.
import * as client from 'openid-client';
import assert from 'node:assert/strict';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const issuer = new URL(env('TESSERA_ISSUER'));
const redirectUri = env('REDIRECT_URI');
const postLogoutUri = env('POST_LOGOUT_URI');

// A browser: a cookie jar and redirects followed by hand until one leaves for `stopAt`.
const jar = new Map();
async function browse(url, stopAt) {
  for (let hop = 0; hop < 20; hop++) {
    if (url.startsWith(stopAt)) return url;
    const cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
    const response = await fetch(url, { redirect: 'manual', headers: cookie ? { cookie, accept: 'text/html' } : { accept: 'text/html' } });
    for (const set of response.headers.getSetCookie()) {
      const [pair, ...attributes] = set.split(';');
      const [name, value] = [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)];
      if (attributes.some((a) => a.trim().toLowerCase() === 'max-age=0')) jar.delete(name);
      else jar.set(name, value);
    }
    const location = response.headers.get('location');
    if (!location) throw new Error(`${url} answered ${response.status} without a redirect: ${await response.text()}`);
    url = new URL(location, url).toString();
  }
  throw new Error('too many redirects');
}

const config = await client.discovery(issuer, env('CLIENT_ID'), env('CLIENT_SECRET'), undefined, {
  execute: [client.allowInsecureRequests],
});
assert.equal(config.serverMetadata().issuer, issuer.href.replace(/\/$/, ''));

async function authorize(extra = {}) {
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid email profile teams',
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
    ...extra,
  });
  const back = await browse(url.href, redirectUri);
  return { back: new URL(back), verifier, state, nonce };
}

// 1. Sign in through the upstream provider; the library checks the id token (signature from
//    the JWKS, iss, aud, exp, nonce) and the RFC 9207 iss parameter.
const first = await authorize();
const tokens = await client.authorizationCodeGrant(config, first.back, {
  pkceCodeVerifier: first.verifier,
  expectedState: first.state,
  expectedNonce: first.nonce,
  idTokenExpected: true,
});
const claims = tokens.claims();
assert.match(claims.sub, /^[0-9a-f-]{36}$/, 'sub is the internal user id');
assert.equal(claims.email, 'rp-user@example.com');
assert.ok(tokens.refresh_token, 'a refresh token');

// 2. Userinfo agrees with the id token.
const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
assert.equal(info.email, 'rp-user@example.com');
assert.ok(Array.isArray(info.teams) && info.teams.length === 1, 'the teams claim');

// 3. Refresh rotates; the new access token is active.
const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
assert.notEqual(refreshed.refresh_token, tokens.refresh_token);
let introspected = await client.tokenIntrospection(config, refreshed.access_token);
assert.equal(introspected.active, true);
assert.equal(introspected.sub, claims.sub);

// 4. The rotated refresh token again: refused, and the whole grant is revoked.
await assert.rejects(client.refreshTokenGrant(config, tokens.refresh_token), (e) => e.error === 'invalid_grant');
introspected = await client.tokenIntrospection(config, refreshed.access_token);
assert.deepEqual(introspected, { active: false });
await assert.rejects(client.refreshTokenGrant(config, refreshed.refresh_token), (e) => e.error === 'invalid_grant');

// 5. A second authorization rides on the Tessera session; revocation ends it.
const second = await authorize();
const more = await client.authorizationCodeGrant(config, second.back, {
  pkceCodeVerifier: second.verifier,
  expectedState: second.state,
  expectedNonce: second.nonce,
  idTokenExpected: true,
});
assert.equal(more.claims().sub, claims.sub);
await client.tokenRevocation(config, more.refresh_token);
assert.deepEqual(await client.tokenIntrospection(config, more.access_token), { active: false });

// 6. Garbage is inactive, not an error.
assert.deepEqual(await client.tokenIntrospection(config, 'not-a-token'), { active: false });

// 7. RP-initiated logout ends the Tessera session: prompt=none then answers login_required.
const third = await authorize();
const last = await client.authorizationCodeGrant(config, third.back, {
  pkceCodeVerifier: third.verifier,
  expectedState: third.state,
  expectedNonce: third.nonce,
});
const logoutUrl = client.buildEndSessionUrl(config, {
  id_token_hint: last.id_token,
  post_logout_redirect_uri: postLogoutUri,
  state: 'bye',
});
const afterLogout = new URL(await browse(logoutUrl.href, postLogoutUri));
assert.equal(afterLogout.searchParams.get('state'), 'bye');
assert.deepEqual(await client.tokenIntrospection(config, last.access_token), { active: false });
const silent = await authorize({ prompt: 'none' });
assert.equal(silent.back.searchParams.get('error'), 'login_required');

console.log(JSON.stringify({ ok: true, sub: claims.sub }));
