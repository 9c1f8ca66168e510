//! `TeamRef`: a path or query value that names a team by id or by slug.

use std::str::FromStr;

use super::{Slug, TeamId};

/// A team named by id (a UUID) or by slug. Slugs are never UUID-shaped, so the two never clash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeamRef {
    /// By id.
    Id(TeamId),
    /// By slug.
    Slug(Slug),
}

/// Why a value names no team.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a team is named by its id (a UUID) or its slug (a-z, 0-9 and hyphens)")]
pub struct TeamRefError;

impl TeamRef {
    /// Parses an id or a slug.
    pub fn parse(value: &str) -> Result<Self, TeamRefError> {
        if let Ok(id) = TeamId::from_str(value) {
            return Ok(TeamRef::Id(id));
        }
        Slug::parse(value).map(TeamRef::Slug).map_err(|_| TeamRefError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_slugs_are_told_apart() {
        assert!(matches!(TeamRef::parse("0190f5a4-4bde-7c4e-9a6f-6f1e2c3d4b5a"), Ok(TeamRef::Id(_))));
        assert!(matches!(TeamRef::parse("adas-team"), Ok(TeamRef::Slug(_))));
        assert_eq!(TeamRef::parse("Not A Slug"), Err(TeamRefError));
        assert_eq!(TeamRef::parse(""), Err(TeamRefError));
    }
}
