-- When the user last authenticated at the upstream provider, as far as the sign-in that started
-- the session proves it: the provider's `auth_time`, or the start of a flow that asked the
-- provider for a fresh login. NULL when unknown (a provider that answered from its own session
-- and did not say when it began, and every session started before this column existed):
-- `prompt=login` and `max_age` then ask for a new sign-in.
ALTER TABLE sessions ADD COLUMN authenticated_at TIMESTAMPTZ;
