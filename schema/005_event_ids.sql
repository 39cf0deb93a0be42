-- One event_id, one event (issue 12). The partitioned table's key must contain event_date, so the
-- same event_id under another timestamp (a producer retrying without event_timestamp across
-- midnight) would become a second row. Every stored event_id is also here, once, written in the
-- same transaction as its row, with a fingerprint of what its producer sent: a redelivery of the
-- same event is a no-op, a different event under a stored id is refused (duplicate_event_id).
CREATE TABLE audit_event_ids (
    event_id       UUID PRIMARY KEY,
    event_date     DATE NOT NULL,
    -- SHA-256 of the canonical JSON of the fields the producer sent, event_id and
    -- event_timestamp excepted; empty for rows stored before this table existed.
    fingerprint    BYTEA NOT NULL,
    -- The timestamp the producer sent; NULL when the service derived it.
    sent_timestamp TIMESTAMP WITH TIME ZONE
);

INSERT INTO audit_event_ids (event_id, event_date, fingerprint)
SELECT DISTINCT ON (event_id) event_id, event_date, ''::bytea
FROM audit_events
ORDER BY event_id, event_date;

COMMENT ON TABLE audit_event_ids IS
    'Every stored audit event_id once (unique across partitions); retention deletes with the rows';
