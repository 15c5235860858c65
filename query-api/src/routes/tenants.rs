//! Tenants. There is no HTTP route: a tenant and its first admin are created from the command
//! line (`query-api admin create-tenant`), which calls [`insert_tenant`] then
//! [`crate::routes::users::insert_user`].

use uuid::Uuid;

/// Create a tenant named `name`; returns its id. The raw database error is returned so that the
/// bootstrap command can say why (a name already taken, an unreachable database).
pub async fn insert_tenant(pool: &sqlx::PgPool, name: &str) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar("INSERT INTO tenants (name) VALUES ($1) RETURNING id")
        .bind(name)
        .fetch_one(pool)
        .await
}
