-- Sessions whose sign-in identity was unlinked before unlinking ended them: the foreign key
-- only cleared their identity_id, and they lived on (and could authorise applications through
-- grants tied to no identity). Every session is made by a sign-in through an identity, so a
-- session without one is such a leftover; it ends here, as an unlink now ends it. The grants
-- such a session made carry no identity either (an offline one, no session), so no unlink could
-- end them: they are revoked too.
DELETE FROM sessions WHERE identity_id IS NULL;
UPDATE oauth_grants SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000000
 WHERE identity_id IS NULL AND revoked_at IS NULL;
