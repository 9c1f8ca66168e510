//! Tessera as an OpenID Provider, over HTTP: the OAuth and OpenID endpoints under `/oauth/`.
//! Every route answers 404 `openid_provider_disabled` while the provider is off.

pub mod jwks;

use std::sync::Arc;

use axum::Router;

use super::AppState;
use super::problem::ApiError;
use crate::error::ErrorCode;
use crate::service::op::keys::SigningKeys;

/// The provider's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().merge(jwks::routes())
}

/// The signing keys, or the 404 that says how to turn the provider on.
pub(crate) fn signing_keys(state: &AppState) -> Result<&SigningKeys, ApiError> {
    state.signing_keys.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::OpenidProviderDisabled,
            "the OpenID Provider is off: configure auth.public_url (TESSERA_PUBLIC_URL) and the key ring \
             (TESSERA_ENCRYPTION_KEYS) to turn it on",
        )
    })
}
