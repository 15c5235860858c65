-- Revocation that takes effect at once (issue 14).
--
-- 1. users.tokens_not_before: access tokens issued (JWT `iat`) before this instant are refused.
--    A password change or reset sets it, so a stolen access token dies with the old password
--    instead of at its expiry. NULL: no cutoff.
ALTER TABLE users ADD COLUMN tokens_not_before timestamptz;

-- 2. API keys die with their creator. An API key acts with the delegated authority of the user
--    who minted it (api_keys.created_by): the lookup refuses it while that user is disabled and
--    caps its scopes by the user's current role. Deleting the user deletes its keys; the former
--    ON DELETE SET NULL turned such a key into an ownerless one that worked on. A key with a NULL
--    creator is one an operator provisioned (seed tooling, SQL), not a user.
--
--    Backfill: a key whose creator is NULL today is either operator-provisioned or was orphaned by
--    SET NULL (its creator deleted, or it was minted through another API key, which recorded no
--    creator). The audit log tells them apart: `api_keys.create` names who minted the key. Follow
--    keys minted by keys up to the first key with a known creator (or a user); then
--      - minted by a user who no longer exists (or is in another tenant): revoke;
--      - minted by a key that has a creator: inherit that creator;
--      - no audit entry, or minted by an operator key: leave it operator-provisioned.
WITH RECURSIVE origin (key_id, actor_kind, actor_id, depth) AS (
    SELECT k.id, a.actor_kind, a.actor_id, 0
    FROM api_keys k
    JOIN audit_log a
      ON a.tenant_id = k.tenant_id AND a.action = 'api_keys.create' AND a.object_id = k.id::text
    WHERE k.created_by IS NULL
  UNION ALL
    SELECT o.key_id, a.actor_kind, a.actor_id, o.depth + 1
    FROM origin o
    JOIN api_keys p ON p.id = o.actor_id AND p.created_by IS NULL
    JOIN audit_log a
      ON a.tenant_id = p.tenant_id AND a.action = 'api_keys.create' AND a.object_id = p.id::text
    WHERE o.actor_kind = 'api_key' AND o.depth < 32
),
root AS (
    SELECT DISTINCT ON (key_id) key_id, actor_kind, actor_id
    FROM origin
    ORDER BY key_id, depth DESC
),
resolved AS (
    SELECT r.key_id,
           CASE WHEN r.actor_kind = 'user' THEN u.id ELSE p.created_by END AS creator,
           (r.actor_kind = 'user' AND u.id IS NULL) AS orphaned
    FROM root r
    JOIN api_keys k ON k.id = r.key_id
    LEFT JOIN users u ON r.actor_kind = 'user' AND u.id = r.actor_id AND u.tenant_id = k.tenant_id
    LEFT JOIN api_keys p ON r.actor_kind = 'api_key' AND p.id = r.actor_id
)
UPDATE api_keys k
SET created_by = coalesce(r.creator, k.created_by),
    revoked_at = CASE WHEN r.orphaned THEN coalesce(k.revoked_at, now()) ELSE k.revoked_at END
FROM resolved r
WHERE k.id = r.key_id AND (r.creator IS NOT NULL OR r.orphaned);

ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_created_by_fkey;
ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_created_by_fkey
    FOREIGN KEY (created_by) REFERENCES users (id) ON DELETE CASCADE;
-- The cascade and the revocations by creator look keys up by creator.
CREATE INDEX api_keys_created_by_idx ON api_keys (created_by);

-- 3. Refresh tokens are revoked by user (password change, disable, role change): the index
--    refresh_tokens_user_idx already serves that.
