// better-auth on PostgreSQL (`pg`), signing in through an OpenID provider with the generic OAuth
// plugin (discovery, PKCE, id_token verified against the provider's JWKS with a nonce), served by
// Node's http server through better-auth's own Node handler. Defaults otherwise: sessions in the
// database, no cookie cache, no secondary storage; rate limiting is off (it would throttle the
// load, and Tessera has none) and so is telemetry.
//
//   node server.mjs --migrate   create the schema with better-auth's migration tooling, then exit
//   node server.mjs             serve; prints "listening" once it accepts connections
//
// Environment: BA_DATABASE_URL, BA_PORT, BA_ISSUER (the provider), BA_POOL (pg pool size, 16),
// BETTER_AUTH_SECRET.
import http from 'node:http';
import pg from 'pg';
import { betterAuth } from 'better-auth';
import { genericOAuth } from 'better-auth/plugins/generic-oauth';
import { toNodeHandler } from 'better-auth/node';
import { getMigrations } from 'better-auth/db/migration';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const port = Number(env('BA_PORT'));
const baseURL = `http://127.0.0.1:${port}`;
const issuer = env('BA_ISSUER').replace(/\/$/, '');

const pool = new pg.Pool({ connectionString: env('BA_DATABASE_URL'), max: Number(process.env.BA_POOL || 16) });
const options = {
  baseURL,
  secret: env('BETTER_AUTH_SECRET'),
  database: pool,
  trustedOrigins: [baseURL],
  rateLimit: { enabled: false },
  telemetry: { enabled: false },
  plugins: [
    genericOAuth({
      config: [
        {
          providerId: 'local',
          discoveryUrl: `${issuer}/.well-known/openid-configuration`,
          requireIdTokenVerification: true,
          clientId: 'better-auth-peer',
          clientSecret: 'peer-client-secret',
          scopes: ['openid', 'profile', 'email'],
          pkce: true,
        },
      ],
    }),
  ],
};

if (process.argv.includes('--migrate')) {
  const { runMigrations, toBeCreated, toBeAdded } = await getMigrations(options);
  await runMigrations();
  console.log(`better-auth schema: ${toBeCreated.length} tables created, ${toBeAdded.length} altered`);
  await pool.end();
  process.exit(0);
}

const auth = betterAuth(options);
const handler = toNodeHandler(auth);
const server = http.createServer((req, res) => {
  if (req.url.startsWith('/api/auth/')) return handler(req, res);
  res.writeHead(404).end();
});
server.keepAliveTimeout = 65_000;
server.listen(port, '127.0.0.1', () => console.log('listening'));
process.on('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
  pool.end().finally(() => process.exit(0));
});
