-- The audit log filtered by actor (`GET /admin/audit?actor=…`) read the
-- log from its newest row until a page of that actor's rows was found: the whole log for a rare
-- one. An actor matches by id or by name, so each has its index, with `id` for the page order.
CREATE INDEX audit_events_actor_id_idx ON audit_events (actor_id, id);
CREATE INDEX audit_events_actor_name_idx ON audit_events (actor_name, id);
