-- Nothing to change on SQLite: the PostgreSQL migration of the same number narrows the link
-- trigger to updates of the link's columns, as it always was here, and gives identities pages
-- room for in-place updates, which SQLite's B-tree does without a fill factor. Migrations come
-- in pairs, so this one exists to keep the versions aligned.
SELECT 1;
