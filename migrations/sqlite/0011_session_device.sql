-- The device a session was started from, as a short label derived from its User-Agent
-- ("Firefox on Linux"): enough to tell one's sessions apart, not the raw header.
ALTER TABLE sessions ADD COLUMN device TEXT;
