//! Passwords: argon2id hashing (PHC strings with a random salt), verification, the strength
//! rule for new passwords, and what a password change revokes ([`store_password`]). Shared by
//! login and the own password change (`routes::identity`) and user management (`routes::users`),
//! so neither route module imports the other.

use crate::error::{ApiError, ApiResult};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use uuid::Uuid;

/// Minimum password length for new passwords, in characters.
pub(crate) const MIN_PASSWORD_LEN: usize = 10;

/// Hash a password with argon2id and a random salt (PHC string).
pub(crate) fn hash_password(password: &str) -> ApiResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("argon2: {e}")))
}

/// Check a password against a PHC string; a malformed PHC string never matches.
pub(crate) fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Reject weak passwords with a field error.
pub(crate) fn check_password_strength(password: &str) -> ApiResult<()> {
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(ApiError::field(
            "password",
            format!("must be at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

/// Check a new password's strength, then hash it off the async runtime (argon2 is deliberately
/// slow).
pub(crate) async fn hash_new_password(password: String) -> ApiResult<String> {
    check_password_strength(&password)?;
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// Store `phc` as `user`'s password, inside the caller's transaction, and revoke what the old
/// password let anyone obtain: every access token issued before now (`tokens_not_before`, checked
/// per request by `gps_store::principal`) and every refresh token of every family. Returns
/// whether the user exists in `tenant`.
pub(crate) async fn store_password(
    tx: &mut sqlx::PgConnection,
    tenant: Uuid,
    user: Uuid,
    phc: &str,
) -> ApiResult<bool> {
    let done = sqlx::query(
        "UPDATE users SET password_hash = $3, tokens_not_before = clock_timestamp(),
                updated_at = now()
         WHERE id = $1 AND tenant_id = $2",
    )
    .bind(user)
    .bind(tenant)
    .bind(phc)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    revoke_refresh_tokens(tx, user).await?;
    Ok(true)
}

/// Revoke every refresh token of `user`, every family: its next refresh is refused and the user
/// logs in again. (Password changes, disabling and role changes.)
pub(crate) async fn revoke_refresh_tokens(
    tx: &mut sqlx::PgConnection,
    user: Uuid,
) -> ApiResult<()> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("correct horse battery!", &phc));
        assert!(!verify_password(
            "correct horse battery",
            "not a phc string"
        ));
    }

    #[test]
    fn strength_counts_characters_not_bytes() {
        assert!(check_password_strength("123456789").is_err());
        assert!(check_password_strength("1234567890").is_ok());
        // Nine two-byte characters: 18 bytes, still too short.
        assert!(check_password_strength("ééééééééé").is_err());
    }

    #[tokio::test]
    async fn a_weak_new_password_is_refused_before_hashing() {
        let err = hash_new_password("short".into()).await.unwrap_err();
        assert!(
            matches!(&err, ApiError::BadRequest { field: Some(f), .. } if f == "password"),
            "{err:?}"
        );
        let phc = hash_new_password("long enough now".into()).await.unwrap();
        assert!(verify_password("long enough now", &phc));
    }
}
