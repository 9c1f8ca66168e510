//! Id newtypes over UUIDs, so that a team id can never be passed where a user id is expected.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered (UUIDv7) id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an id read back from storage.
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The underlying UUID, for storage.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// The internal, stable id of a person. Never an upstream `sub`.
    UserId
);
id_type!(
    /// The id of a team.
    TeamId
);
id_type!(
    /// The id of one external identity (an issuer and subject pair).
    IdentityId
);
id_type!(
    /// The id of an outbox event.
    EventId
);
id_type!(
    /// The id of a connected account (auth profile).
    ProfileId
);
id_type!(
    /// The id of a webhook endpoint.
    WebhookId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_version_7_and_round_trip_through_text() {
        let id = UserId::generate();
        assert_eq!(id.as_uuid().get_version_num(), 7);
        let parsed: UserId = id.to_string().parse().unwrap();
        assert_eq!(parsed, id);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        assert!("not-a-uuid".parse::<UserId>().is_err());
        assert!("".parse::<TeamId>().is_err());
    }
}
