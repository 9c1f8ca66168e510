// The measuring half of scripts/bench-peer (which starts everything and passes it here through
// the environment): Tessera beside better-auth on the same PostgreSQL cluster and the same
// upstream OpenID provider, every figure read as a ratio within this one run.
//
//  1. Signs one user into each server through the provider, SESSIONS times, each in a fresh
//     cookie jar: a real authorization-code round trip, following every redirect.
//  2. Session → user: better-auth `GET /api/auth/get-session` and Tessera `GET /v1/me` with
//     those session cookies (connection i uses cookie i mod SESSIONS), autocannon for DURATION
//     seconds after a warm-up, at each of CONNECTIONS; req/s, p50/p99, and the CPU time per
//     request of the server process (utime+stime of all its threads, /proc/<pid>/stat) and of
//     the PostgreSQL cluster (postmaster and its children).
//  3. Returning-user browser sign-in: SIGN_INS sequential full round trips per server (start →
//     provider → callback → session cookie set), each in a fresh cookie jar; server and
//     PostgreSQL CPU per sign-in.
// The load generator and the driver run in this process, on the same cores as the servers: the
// `/healthz` row shows how fast this client can go at all.
import fs from 'node:fs';
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import autocannon from 'autocannon';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === '') throw new Error(`${name} is not set`);
  return value;
};
const BA = env('BA_URL');
const BA_PID = Number(env('BA_PID'));
const TS = env('TESSERA_URL');
const TS_PID = Number(env('TESSERA_PID'));
const PG_PID = Number(env('PG_PID'));
const CONNECTIONS = env('CONNECTIONS', '16,64').split(',').map(Number);
const DURATION = Number(env('DURATION', '10'));
const WARMUP = Number(env('WARMUP', '3'));
const SIGN_INS = Number(env('SIGN_INS', '300'));
const SESSIONS = Number(env('SESSIONS', '8'));
const RETURN_TO = '/signed-in';
const BA_COOKIE = 'better-auth.session_token';
const TS_COOKIE = 'tessera_session';

// ---- CPU time from /proc ----------------------------------------------------------------------

const TICK = 1000 / Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()); // ms per tick

function stat(pid) {
  const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name: state is field 3, ppid 4, utime 14, stime 15,
  // cutime 16, cstime 17.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const n = (field) => Number(fields[field - 3]);
  return { ppid: n(4), own: n(14) + n(15), children: n(16) + n(17) };
}

/** CPU milliseconds of one process, all its threads. */
const processCpu = (pid) => stat(pid).own * TICK;

/** CPU milliseconds of the PostgreSQL cluster: the postmaster, its live children, and its
 * reaped children (counted into the postmaster's cutime/cstime when they exit). */
function clusterCpu() {
  const master = stat(PG_PID);
  let ticks = master.own + master.children;
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const s = stat(Number(entry));
      if (s.ppid === PG_PID) ticks += s.own;
    } catch {
      // Exited meanwhile.
    }
  }
  return ticks * TICK;
}

async function measureCpu(work) {
  const server = { ba: processCpu(BA_PID), ts: processCpu(TS_PID) };
  const pg = clusterCpu();
  const started = process.hrtime.bigint();
  const result = await work();
  const wall = Number(process.hrtime.bigint() - started) / 1e6;
  return {
    result,
    wall,
    cpu: { ba: processCpu(BA_PID) - server.ba, ts: processCpu(TS_PID) - server.ts, pg: clusterCpu() - pg },
  };
}

// ---- A browser: a cookie jar and redirects followed by hand ------------------------------------

class Browser {
  constructor() {
    this.cookies = new Map(); // host → Map(name → {value, path})
  }

  cookieHeader(url) {
    const jar = this.cookies.get(url.hostname);
    if (!jar) return undefined;
    const pairs = [];
    for (const [name, { value, path }] of jar) if (url.pathname.startsWith(path)) pairs.push(`${name}=${value}`);
    return pairs.length ? pairs.join('; ') : undefined;
  }

  store(url, response) {
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(';').map((part) => part.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let path = '/';
      let expired = value === '';
      for (const attribute of attributes) {
        const [key, v] = attribute.split('=');
        if (key.toLowerCase() === 'path' && v) path = v;
        if (key.toLowerCase() === 'max-age' && Number(v) <= 0) expired = true;
        if (key.toLowerCase() === 'expires' && Date.parse(v) <= Date.now()) expired = true;
      }
      if (!this.cookies.has(url.hostname)) this.cookies.set(url.hostname, new Map());
      const jar = this.cookies.get(url.hostname);
      if (expired) jar.delete(name);
      else jar.set(name, { value, path });
    }
  }

  cookie(host, name) {
    return this.cookies.get(host)?.get(name)?.value;
  }

  async request(target, init = {}) {
    const url = new URL(target);
    const headers = { ...(init.headers ?? {}) };
    const cookie = this.cookieHeader(url);
    if (cookie) headers.cookie = cookie;
    const response = await fetch(url, { ...init, headers, redirect: 'manual' });
    this.store(url, response);
    return response;
  }

  /** Follows redirects from `response` (whose URL was `from`) until one points at `stop`, an
   * app page outside the auth server that is not fetched. Returns the hops' statuses. */
  async follow(from, response, stop) {
    const hops = [response.status];
    let url = new URL(from);
    while (response.status >= 300 && response.status < 400) {
      const next = new URL(response.headers.get('location'), url);
      await response.arrayBuffer();
      if (next.pathname === stop.pathname && next.origin === stop.origin) return hops;
      if (hops.length > 10) throw new Error(`more than 10 redirects from ${from}`);
      url = next;
      response = await this.request(url);
      hops.push(response.status);
    }
    throw new Error(`sign-in ended at ${url.origin}${url.pathname} with ${response.status}: ${(await response.text()).slice(0, 300)}`);
  }
}

/** better-auth: the app's POST /sign-in/social (JSON answer with the provider's URL, the state
 * cookie set), then the browser goes to the provider, which redirects to the callback, which sets
 * the session cookie and redirects to callbackURL. */
async function signInBetterAuth() {
  const browser = new Browser();
  const start = await browser.request(`${BA}/api/auth/sign-in/social`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', origin: BA },
    body: JSON.stringify({ provider: 'local', callbackURL: RETURN_TO }),
  });
  if (start.status !== 200) throw new Error(`better-auth sign-in/social answered ${start.status}: ${await start.text()}`);
  const { url } = await start.json();
  const provider = await browser.request(url);
  await browser.follow(url, provider, new URL(RETURN_TO, BA));
  const session = browser.cookie(new URL(BA).hostname, BA_COOKIE);
  if (!session) throw new Error('better-auth set no session cookie');
  return `${BA_COOKIE}=${session}`;
}

/** Tessera: GET /auth/login (303 to the provider, login cookie set), the provider redirects to the
 * callback, which sets the session cookie and redirects to return_to. */
async function signInTessera() {
  const browser = new Browser();
  const login = `${TS}/auth/login?provider=local&return_to=${encodeURIComponent(RETURN_TO)}`;
  const response = await browser.request(login);
  if (response.status !== 303) throw new Error(`tessera /auth/login answered ${response.status}: ${await response.text()}`);
  await browser.follow(login, response, new URL(RETURN_TO, TS));
  const session = browser.cookie(new URL(TS).hostname, TS_COOKIE);
  if (!session) throw new Error('tessera set no session cookie');
  return `${TS_COOKIE}=${session}`;
}

async function whoAmI(url, cookie, pick) {
  const response = await fetch(url, { headers: { cookie } });
  if (response.status !== 200) throw new Error(`${url} answered ${response.status}: ${await response.text()}`);
  const body = await response.json();
  const who = pick(body);
  if (!who) throw new Error(`${url} answered no user: ${JSON.stringify(body).slice(0, 300)}`);
  return who;
}

// ---- Load ------------------------------------------------------------------------------------

async function load(url, connections, duration, cookies) {
  let next = 0;
  // autocannon's own histogram keeps whole milliseconds; keep every latency (ms, from hrtime).
  const latencies = [];
  const result = await new Promise((resolve, reject) => {
    const instance = autocannon(
      {
        url,
        connections,
        duration,
        timeout: 30, // seconds; a starved peer at 64 connections can take several
        setupClient: cookies ? (client) => client.setHeaders({ cookie: cookies[next++ % cookies.length] }) : undefined,
      },
      (error, done) => (error ? reject(error) : resolve(done)),
    );
    instance.on('response', (_client, _status, _bytes, ms) => latencies.push(ms));
  });
  const answered = result['2xx'] + result.non2xx;
  if (result.non2xx || result.errors || result.timeouts) {
    throw new Error(`${url}: ${result.non2xx} non-2xx answers, ${result.errors} errors, ${result.timeouts} timeouts`);
  }
  latencies.sort((a, b) => a - b);
  const quantile = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
  return { answered, rate: answered / result.duration, p50: quantile(0.5), p99: quantile(0.99) };
}

async function measureLoad(url, connections, cookies, pid) {
  await load(url, connections, WARMUP, cookies);
  const { result, cpu } = await measureCpu(() => load(url, connections, DURATION, cookies));
  return { ...result, cpu: cpu[pid] / result.answered, pg: cpu.pg / result.answered };
}

async function measureSignIns(signIn, pid) {
  for (let i = 0; i < 20; i++) await signIn(); // warm-up
  const { wall, cpu } = await measureCpu(async () => {
    for (let i = 0; i < SIGN_INS; i++) await signIn();
  });
  return { cpu: cpu[pid] / SIGN_INS, pg: cpu.pg / SIGN_INS, wall: wall / SIGN_INS };
}

// ---- The run -----------------------------------------------------------------------------------

const cpuModel = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^model name\s*:\s*(.*)$/m) ?? [])[1] ?? 'unknown CPU';
const version = (name) => JSON.parse(fs.readFileSync(new URL(`node_modules/${name}/package.json`, import.meta.url))).version;
console.log(`# Tessera beside better-auth ${version('better-auth')} (pg ${version('pg')}, Node ${process.version}), ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC`);
console.log(`# machine: ${os.cpus().length} CPUs (nproc ${execFileSync('nproc').toString().trim()}), ${cpuModel}`);
console.log(`# ${env('PEER_INFO', '')}`);

// 1. Sign-ins through the provider.
const baCookies = [];
const tsCookies = [];
for (let i = 0; i < SESSIONS; i++) {
  baCookies.push(await signInBetterAuth());
  tsCookies.push(await signInTessera());
}
// Every session is the same (returning) user's.
const users = async (url, cookies, pick) => [...new Set(await Promise.all(cookies.map((c) => whoAmI(url, c, pick))))];
const baUsers = await users(`${BA}/api/auth/get-session`, baCookies, (b) => b?.user?.id);
const tsUsers = await users(`${TS}/v1/me`, tsCookies, (b) => b?.id);
if (baUsers.length !== 1 || tsUsers.length !== 1) throw new Error(`expected one user each, got ${baUsers} and ${tsUsers}`);
const [baUser, tsUser] = [baUsers[0], tsUsers[0]];
console.log(`# signed in through the provider, ${SESSIONS} sessions each: better-auth user ${baUser}, Tessera user ${tsUser}`);

// 2. Session → user.
const rows = [];
const table = (widths) => (...cells) => cells.map((cell, i) => (i === 0 ? String(cell).padEnd(widths[0]) : String(cell).padStart(widths[i]))).join('');
const row = table([36, 6, 10, 9, 9, 12, 11]);
const fixed = (value, digits) => (Number.isFinite(value) ? value.toFixed(digits) : '-');
const ratio = (a, b, digits) => (b > 0 && Number.isFinite(a / b) ? `${(a / b).toFixed(digits)}x` : '-');
const loadRow = (label, conns, r) => row(label, conns, fixed(r.rate, 0), fixed(r.p50, 2), fixed(r.p99, 2), fixed(r.cpu, 3), fixed(r.pg, 3));
rows.push(row('session → user', 'conns', 'req/s', 'p50 ms', 'p99 ms', 'CPU ms/req', 'PG ms/req'));
for (const connections of CONNECTIONS) {
  const ba = await measureLoad(`${BA}/api/auth/get-session`, connections, baCookies, 'ba');
  const ts = await measureLoad(`${TS}/v1/me`, connections, tsCookies, 'ts');
  rows.push(loadRow('better-auth /api/auth/get-session', connections, ba));
  rows.push(loadRow('tessera /v1/me', connections, ts));
  rows.push(row('  tessera/better-auth', '', ratio(ts.rate, ba.rate, 1), ratio(ts.p50, ba.p50, 2), ratio(ts.p99, ba.p99, 2), ratio(ts.cpu, ba.cpu, 3), ratio(ts.pg, ba.pg, 3)));
}
const ceiling = await measureLoad(`${TS}/healthz`, Math.max(...CONNECTIONS), undefined, 'ts');
rows.push(loadRow('(client ceiling: tessera /healthz)', Math.max(...CONNECTIONS), ceiling));

// 3. Returning-user browser sign-ins.
const baSign = await measureSignIns(signInBetterAuth, 'ba');
const tsSign = await measureSignIns(signInTessera, 'ts');
const signRow = table([52, 9, 12, 11]);
rows.push('');
rows.push(signRow(`browser sign-in, returning user (${SIGN_INS} in a row)`, 'wall ms', 'CPU ms', 'PG CPU ms'));
rows.push(signRow('better-auth', fixed(baSign.wall, 2), fixed(baSign.cpu, 3), fixed(baSign.pg, 3)));
rows.push(signRow('tessera', fixed(tsSign.wall, 2), fixed(tsSign.cpu, 3), fixed(tsSign.pg, 3)));
rows.push(signRow('  tessera/better-auth', ratio(tsSign.wall, baSign.wall, 2), ratio(tsSign.cpu, baSign.cpu, 3), ratio(tsSign.pg, baSign.pg, 3)));
console.log(rows.join('\n'));
process.exit(0);
