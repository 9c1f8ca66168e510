// An MCP client written by others (the official TypeScript SDK, @modelcontextprotocol/sdk) acting
// as an AI agent against Tessera's MCP endpoint over Streamable HTTP, with a Tessera access token:
// lists the tools, finds its user's team with list_teams, creates an auth profile (and gets its connect link), lists, reads, hits a
// pending_auth_conflict and the other tool errors, reuses the pending profile, updates it, is
// refused a personal default and a test of an unconnected profile, and deletes it.
// Exits non-zero, saying why, at the first surprise; prints a JSON summary as its last line.
//
// Environment: MCP_URL, MCP_TOKEN, TEAM (a team of the token's user), OTHER_TEAM (a team they are
// not a member of), PROVIDER (a sign-in provider configured in Tessera).
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import assert from 'node:assert/strict';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const url = new URL(env('MCP_URL'));
const team = env('TEAM');
const otherTeam = env('OTHER_TEAM');
const provider = env('PROVIDER');

const transport = new StreamableHTTPClientTransport(url, {
  requestInit: { headers: { Authorization: `Bearer ${env('MCP_TOKEN')}` } },
});
const client = new Client({ name: 'tessera-test-agent', version: '1.0.0' });
await client.connect(transport);
assert.equal(transport.sessionId, undefined, 'the server is stateless: no session id');

// 1. The tools: manage_auth_profiles, its arguments named as in the system it comes from, and
// list_teams, read only and without arguments.
const { tools } = await client.listTools();
assert.deepEqual(tools.map((t) => t.name), ['manage_auth_profiles', 'list_teams']);
assert.equal(tools[1].annotations.readOnlyHint, true);
assert.deepEqual(Object.keys(tools[1].inputSchema.properties ?? {}), []);
const schema = tools[0].inputSchema;
for (const name of ['action', 'team', 'slug', 'connector_key', 'profile_kind', 'provider', 'display_name', 'scopes']) {
  assert.ok(schema.properties[name], `the schema has ${name}`);
}
assert.deepEqual([...schema.required].sort(), ['action', 'team']);

// A call: the result's text content is JSON, and the same value as its structured content.
async function call(args) {
  const result = await client.callTool({ name: 'manage_auth_profiles', arguments: args });
  assert.equal(result.content.length, 1);
  assert.equal(result.content[0].type, 'text');
  const value = JSON.parse(result.content[0].text);
  assert.deepEqual(result.structuredContent, value);
  return { error: result.isError === true, value };
}
async function ok(args) {
  const { error, value } = await call(args);
  assert.equal(error, false, `${args.action} failed: ${JSON.stringify(value)}`);
  return value;
}
const codes = {};
async function fails(args, code) {
  const { error, value } = await call(args);
  assert.equal(error, true, `${args.action} should fail with ${code}: ${JSON.stringify(value)}`);
  assert.equal(value.code, code, JSON.stringify(value));
  assert.equal(typeof value.detail, 'string');
  assert.doesNotMatch(JSON.stringify(value).toLowerCase(), /constraint|duplicate|unique|sqlite|postgres|sqlx|violates/);
  codes[code] = value;
  return value;
}

// The user's teams, the default first: the agent learns its `team` here.
const teamsResult = await client.callTool({ name: 'list_teams', arguments: {} });
assert.notEqual(teamsResult.isError, true, JSON.stringify(teamsResult));
const teams = JSON.parse(teamsResult.content[0].text).teams;
assert.deepEqual(teamsResult.structuredContent.teams, teams);
assert.deepEqual(teams.map((t) => [t.slug, t.role, t.is_default]), [[team, 'owner', true]]);
assert.ok(!teams.some((t) => t.slug === otherTeam), 'only the token user\'s teams');
const withArguments = await client.callTool({ name: 'list_teams', arguments: { team } });
assert.equal(withArguments.isError, true);
assert.equal(JSON.parse(withArguments.content[0].text).code, 'invalid_request');

// 2. Create: pending, with a connect link to show the user.
const request = {
  action: 'create', team, connector_key: 'github-issues', profile_kind: 'oauth_account', provider,
  display_name: 'My issues', slug: 'my-issues', scopes: ['repo'],
};
const created = await ok(request);
assert.equal(created.auth_profile.slug, 'my-issues');
assert.equal(created.auth_profile.status, 'pending_auth');
assert.deepEqual(created.auth_profile.scopes, ['repo']);
assert.ok(created.connect_url.startsWith(new URL('/connect/', url).href), created.connect_url);
assert.ok(created.connect_expires_at);

// 3. List and get.
const listed = await ok({ action: 'list', team });
assert.deepEqual(listed.auth_profiles.map((p) => p.slug), ['my-issues']);
const got = await ok({ action: 'get', team, slug: 'my-issues' });
assert.equal(got.id, created.auth_profile.id);
assert.equal(got.connector_key, 'github-issues');

// 4. Another slug while this one is pending: a tool error naming the pending profile.
const conflict = await fails({ ...request, slug: 'other-issues' }, 'pending_auth_conflict');
assert.equal(conflict.existing_slug, 'my-issues');
// Without a slug: the pending profile again, with a fresh link.
const reused = await ok({ ...request, slug: undefined });
assert.equal(reused.auth_profile.id, created.auth_profile.id);
assert.notEqual(reused.connect_url, created.connect_url);

// 5. The other errors an agent meets, each with its code.
await fails({ action: 'credentials', team, slug: 'my-issues' }, 'profile_not_connected');
await fails({ action: 'list', team: otherTeam }, 'team_not_found');
await fails({ ...request, team: otherTeam, slug: 'theirs' }, 'team_not_found');
await fails({ action: 'get', team }, 'missing_field');
await fails({ action: 'get', team, slug: 'nope' }, 'profile_not_found');
await fails({ action: 'explode', team }, 'invalid_request');
await fails({ ...request, slug: 'x', profile_kind: 'carrier_pigeon' }, 'invalid_profile_kind');
await fails({ action: 'list' }, 'missing_field');

// 6. Update (a new name and slug), set_default and test, each through the REST rules.
const updated = await ok({ action: 'update', team, slug: 'my-issues', display_name: 'Issues', new_slug: 'issues' });
assert.equal(updated.auth_profile.id, created.auth_profile.id);
assert.equal(updated.auth_profile.slug, 'issues');
assert.equal(updated.auth_profile.display_name, 'Issues');
assert.equal(updated.reconnect_required, false);
await fails({ action: 'get', team, slug: 'my-issues' }, 'profile_not_found');
await fails({ action: 'set-default', team, slug: 'issues' }, 'personal_profile_not_default');
await fails({ action: 'test', team, slug: 'issues' }, 'profile_not_connected');

// 7. Delete: revoked, gone from the list, the slug free again.
const deleted = await ok({ action: 'delete', team, slug: 'issues' });
assert.deepEqual(deleted, { slug: 'issues', status: 'revoked' });
assert.deepEqual((await ok({ action: 'list', team })).auth_profiles, []);
await fails({ action: 'get', team, slug: 'issues' }, 'profile_not_found');

// 8. An unknown tool is a protocol error, not a result.
await assert.rejects(client.callTool({ name: 'rm_rf', arguments: {} }));

await client.close();
console.log(JSON.stringify({ profile_id: created.auth_profile.id, codes: Object.keys(codes).sort(), missing: codes.missing_field }));
