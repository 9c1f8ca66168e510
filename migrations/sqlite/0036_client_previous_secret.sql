-- A client's secret rotated with an overlap (`POST /admin/clients/{id}/secret?overlap_seconds=`):
-- the SHA-256 of the secret it replaced, accepted beside the new one until
-- `previous_secret_until`. NULL for a client rotated without one (and for every client before).
ALTER TABLE clients ADD COLUMN previous_secret_hash BLOB
    CHECK (previous_secret_hash IS NULL OR length(previous_secret_hash) = 32);
ALTER TABLE clients ADD COLUMN previous_secret_until INTEGER;
