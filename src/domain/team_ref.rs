//! `TeamRef` and `ProfileRef`: a path or query value that names a team, or an auth profile
//! within a team, by id or by slug.

use std::fmt;
use std::str::FromStr;

use super::{ProfileId, Slug, TeamId};

/// A record named by its id (a UUID) or by its slug. Slugs are never UUID-shaped, so the two never
/// clash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdOrSlug<I> {
    /// By id.
    Id(I),
    /// By slug.
    Slug(Slug),
}

/// A team named by id or by slug.
pub type TeamRef = IdOrSlug<TeamId>;

/// An auth profile named by id or by its slug in its team. An id stays the same profile across a
/// rename, so a page or a client that holds one acts on the profile it showed.
pub type ProfileRef = IdOrSlug<ProfileId>;

/// Why a value names no record of `I`'s kind.
pub struct RefError<I>(std::marker::PhantomData<I>);

impl<I: FromStr> IdOrSlug<I> {
    /// Parses an id or a slug.
    pub fn parse(value: &str) -> Result<Self, RefError<I>> {
        if let Ok(id) = I::from_str(value) {
            return Ok(IdOrSlug::Id(id));
        }
        Slug::parse(value).map(IdOrSlug::Slug).map_err(|_| RefError(std::marker::PhantomData))
    }
}

impl fmt::Display for RefError<TeamId> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a team is named by its id (a UUID) or its slug (a-z, 0-9 and hyphens)")
    }
}

impl fmt::Display for RefError<ProfileId> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an auth profile is named by its id (a UUID) or its slug (a-z, 0-9 and single inner hyphens)")
    }
}

impl<I> fmt::Debug for RefError<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefError")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_slugs_are_told_apart() {
        assert!(matches!(TeamRef::parse("0190f5a4-4bde-7c4e-9a6f-6f1e2c3d4b5a"), Ok(TeamRef::Id(_))));
        assert!(matches!(TeamRef::parse("adas-team"), Ok(TeamRef::Slug(_))));
        assert!(TeamRef::parse("Not A Slug").is_err());
        assert!(TeamRef::parse("").is_err());
        assert!(matches!(ProfileRef::parse("0190f5a4-4bde-7c4e-9a6f-6f1e2c3d4b5a"), Ok(ProfileRef::Id(_))));
        assert!(matches!(ProfileRef::parse("github"), Ok(ProfileRef::Slug(_))));
        assert!(ProfileRef::parse("GitHub").is_err());
    }
}
