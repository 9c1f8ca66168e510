"""The audit log's actor filter on SQLite at a million rows, before and after migration 0029
(the actor indexes and the page led by its actor): the rare actor's one row found by walking the
log from its newest row, against through the index. Run from the repository: python3
bench/audit-filter.py (Python's own sqlite3; the database is a temp file)."""
import os, sqlite3, tempfile, time
path = os.path.join(tempfile.mkdtemp(), 'audit.db')
db = sqlite3.connect(path)
schema = open('migrations/sqlite/0014_audit_log.sql').read()
db.executescript(schema)
n = 1_000_000
rows = ((1700000000000000 + i, 'admin_token' if i % 2 else 'user', str(i % 5000), 'name%d' % (i % 5000),
         ['user.disabled','sign_in.succeeded','team.created'][i % 3], 'user', 'u%d' % (i % 100000), None, 'success', None, None)
        for i in range(n))
db.executemany("INSERT INTO audit_events (at, actor_kind, actor_id, actor_name, action, target_kind, target_id, request_id, outcome, reason, details) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
db.execute("INSERT INTO audit_events (at, actor_kind, actor_id, actor_name, action, target_kind, target_id, request_id, outcome, reason, details) VALUES (1, 'system', 'rare', 'rare-name', 'user.enabled', 'user', 'x', NULL, 'success', NULL, NULL)")
db.commit()
def page(lead):
    return ("SELECT id, at, actor_kind, actor_id, actor_name, action, target_kind, target_id, request_id, outcome, reason, details FROM audit_events WHERE " + lead +
     " AND (?1 IS NULL OR action = ?1) AND (?2 IS NULL OR actor_id = ?2 OR actor_name = ?2) AND (?3 IS NULL OR target_kind = ?3) AND (?4 IS NULL OR target_id = ?4) AND (?5 IS NULL OR at >= ?5) AND (?6 IS NULL OR at < ?6) AND (?7 IS NULL OR id < ?7) ORDER BY id DESC LIMIT ?8")
old = page("1")
params = (None, 'rare', None, None, None, None, None, 100)
def timeit(sql, label):
    best = 1e9
    for _ in range(5):
        t = time.perf_counter(); r = db.execute(sql, params).fetchall(); best = min(best, time.perf_counter() - t)
    print(f"{label}: {best*1000:.2f} ms, {len(r)} row(s)")
    return best
a = timeit(old, "before (no lead, no actor index)")
db.executescript(open('migrations/sqlite/0029_audit_actor_indexes.sql').read())
b = timeit(page("(actor_id = ?2 OR actor_name = ?2)"), "after (actor lead, 0029 indexes)")
print(f"ratio before/after: {a/b:.0f}x")
