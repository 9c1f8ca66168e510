"""The audit log's actor filter on SQLite at a million rows, before and after migration 29 (the
actor's indexes, and a page led by its actor): a rare actor's one row, and a page of a frequent
actor's (half the log), the first and a deep one. Run from the repository:
python3 bench/audit-filter.py (Python's own sqlite3; the database is a temp file)."""
import os, sqlite3, tempfile, time

db = sqlite3.connect(os.path.join(tempfile.mkdtemp(), 'audit.db'))
db.executescript(open('migrations/sqlite/0014_audit_log.sql').read())
n = 1_000_000
rows = ((1700000000000000 + i, 'admin_token' if i % 2 else 'user', '0' if i % 2 else str(i % 5000),
         'admin_tokens[0]' if i % 2 else 'name%d' % (i % 5000),
         ['user.disabled', 'sign_in.succeeded', 'team.created'][i % 3], 'user', 'u%d' % (i % 100000),
         None, 'success', None, None)
        for i in range(n))
db.executemany("INSERT INTO audit_events (at, actor_kind, actor_id, actor_name, action, target_kind, target_id,"
               " request_id, outcome, reason, details) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
db.execute("INSERT INTO audit_events (at, actor_kind, actor_id, actor_name, action, target_kind, target_id,"
           " request_id, outcome, reason, details)"
           " VALUES (1, 'system', 'rare', 'rare-name', 'user.enabled', 'user', 'x', NULL, 'success', NULL, NULL)")
db.commit()

COLUMNS = ("SELECT id, at, actor_kind, actor_id, actor_name, action, target_kind, target_id, request_id, outcome,"
           " reason, details FROM audit_events")
OLD = COLUMNS + (" WHERE (?1 IS NULL OR action = ?1) AND (?2 IS NULL OR actor_id = ?2 OR actor_name = ?2)"
                 " AND (?3 IS NULL OR target_kind = ?3) AND (?4 IS NULL OR target_id = ?4) AND (?5 IS NULL OR at >= ?5)"
                 " AND (?6 IS NULL OR at < ?6) AND (?7 IS NULL OR id < ?7) ORDER BY id DESC LIMIT ?8")

def where(lead):
    return (" WHERE " + lead + " AND (?1 IS NULL OR action = ?1) AND (?2 IS NULL OR actor_id = ?2 OR actor_name = ?2)"
            " AND (?3 IS NULL OR target_kind = ?3) AND (?4 IS NULL OR target_id = ?4) AND (?5 IS NULL OR at >= ?5)"
            " AND (?6 IS NULL OR at < ?6) AND id < COALESCE(?7, 9223372036854775807) ORDER BY id DESC LIMIT ?8")

# As src/store/audit.rs's PAGE_BY_ACTOR.
NEW = (COLUMNS + " WHERE id IN (SELECT id FROM (SELECT id FROM audit_events" + where("actor_id = ?2")
       + ") AS by_id UNION SELECT id FROM (SELECT id FROM audit_events" + where("actor_name = ?2")
       + ") AS by_name) ORDER BY id DESC LIMIT ?8")

def best(sql, params):
    times = []
    for _ in range(5):
        started = time.perf_counter()
        found = db.execute(sql, params).fetchall()
        times.append(time.perf_counter() - started)
    return min(times), found

cases = [("rare actor, its one row", ('rare', None)),
         ("frequent actor, first page", ('0', None)),
         ("frequent actor, a page below the newest 800,000 rows", ("0", 200_000))]
before = {label: best(OLD, (None, actor, None, None, None, None, cursor, 100)) for label, (actor, cursor) in cases}
db.executescript(open('migrations/sqlite/0029_audit_actor_indexes.sql').read())
for label, (actor, cursor) in cases:
    (old_time, old_rows), (new_time, new_rows) = before[label], best(NEW, (None, actor, None, None, None, None, cursor, 100))
    assert old_rows == new_rows, label
    print(f"{label}: {old_time * 1000:.2f} ms before, {new_time * 1000:.2f} ms after ({old_time / new_time:.1f}x), "
          f"{len(new_rows)} row(s), the same")
