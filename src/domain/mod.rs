//! Domain types: validated values ("parse, don't validate") and the records Tessera keeps.

mod email;
mod ids;
mod issuer;
mod model;
mod slug;
mod text;

pub use email::{Email, EmailError};
pub use ids::{EventId, IdentityId, TeamId, UserId};
pub use issuer::{Issuer, IssuerError};
pub use model::{Identity, Role, Team, TeamMembership, User, UserProfile};
pub use slug::{Slug, SlugError};
pub use text::{DisplayName, Subject, TextError};
