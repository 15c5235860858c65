-- Webhooks (issue 16): the delivery log of one webhook (`GET /v1/webhooks/{id}/deliveries`)
-- is read newest first in keyset pages of the delivery id; this index serves that order (the
-- one on (webhook_id, created_at) does not give id order). A plain index on a plain table:
-- both storage paths, no superuser rights.
CREATE INDEX webhook_deliveries_webhook_id_idx ON webhook_deliveries (webhook_id, id);
