//! Passwords: argon2id hashing (PHC strings with a random salt), verification, and the strength
//! rule for new passwords. Shared by login (`routes::identity`) and user management
//! (`routes::users`), so neither route module imports the other.

use crate::error::{ApiError, ApiResult};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

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
