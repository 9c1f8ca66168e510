// A real third-party OpenID provider for the end-to-end sign-in test: oauth2-mock-server on
// 127.0.0.1 with a fresh RSA key. It signs the user in at /authorize without a page, checks PKCE,
// and puts the nonce in the id_token. Prints {"issuer": "..."} once listening; stops on SIGTERM
// or when stdin closes (so that it never outlives the test).
import { OAuth2Server } from 'oauth2-mock-server';

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
server.service.on('beforeTokenSigning', (token) => {
  token.payload.email = 'e2e.user@example.com';
  token.payload.email_verified = true;
  token.payload.name = 'Erin Endtoend';
});
await server.start(0, '127.0.0.1');
console.log(JSON.stringify({ issuer: server.issuer.url }));

const stop = async () => {
  await server.stop();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
