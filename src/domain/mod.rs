//! Domain types: validated values ("parse, don't validate") and the records Tessera keeps.

mod auth_profile;
mod client;
pub mod client_rules;
mod email;
pub mod events;
mod ids;
mod issuer;
mod model;
mod return_to;
mod slug;
mod team_ref;
mod text;
mod webhook;

pub use auth_profile::{
    AuthProfile, ConnectRefusal, CredentialMeta, FieldSet, ProfileKind, ProfileRight, ProfileStatus,
};
pub use client::{
    Client, ClientId, ClientIdError, ClientKind, GrantType, OFFLINE_ACCESS, PreviousSecret, RedirectUri,
    RedirectUriError, SigningAlg, same_resource,
};
pub use email::{DomainName, DomainNameError, Email, EmailError};
pub use ids::{EventId, IdentityId, ProfileId, TeamId, UserId, WebhookId};
pub use issuer::{Issuer, IssuerError, host_within, is_loopback};
pub use model::{
    DomainClaim, Identity, Principal, Role, Team, TeamMembership, TeamRole, User, UserProfile, may_unlink,
};
pub use return_to::{ReturnTo, ReturnToError};
pub use slug::{Slug, SlugError};
pub use team_ref::{IdOrSlug, ProfileRef, RefError, TeamRef};
pub use text::{DisplayName, Subject, TextError, is_hidden_control, is_invisible, provider_label};
pub use webhook::{DeliveryJob, DeliveryState, WebhookDelivery, WebhookEndpoint, endpoint_url, is_forbidden_ip};

/// The current time at the precision the databases keep (microseconds), so that a record
/// returned from a write equals the same record read back.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6)
}
