// The upstream OpenID provider both servers sign in through: oauth2-mock-server on 127.0.0.1 with
// a fresh RSA key, as tests/support/mock-oidc.mjs (the end-to-end test's provider). It signs the
// same user in at /authorize without a page, checks PKCE and puts the nonce in the id_token, so
// every sign-in after the first is a returning user's. Prints {"issuer": "..."} once listening;
// stops on SIGTERM.
import { OAuth2Server } from 'oauth2-mock-server';

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.service.on('beforeTokenSigning', (token) => {
  token.payload.email = 'peer.user@example.com';
  token.payload.email_verified = true;
  token.payload.name = 'Pat Peer';
});
await server.start(0, '127.0.0.1');
console.log(JSON.stringify({ issuer: server.issuer.url }));

process.on('SIGTERM', async () => {
  await server.stop();
  process.exit(0);
});
