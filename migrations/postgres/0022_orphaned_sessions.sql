-- Sessions whose sign-in identity was unlinked before unlinking ended them: the foreign key
-- only cleared their identity_id, and they lived on (and could authorise applications through
-- grants tied to no identity). Every session is made by a sign-in through an identity, so a
-- session without one is such a leftover; it ends here, as an unlink now ends it.
DELETE FROM sessions WHERE identity_id IS NULL;
