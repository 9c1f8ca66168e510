//! Users as operators see them: listed a page at a time with filters, and deleted with everything
//! that is theirs. Also the paging rules every admin listing shares: an opaque cursor and a
//! bounded page size.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::principals::{PrincipalCache, change_to_end};
use crate::domain::{Email, Issuer, Subject, Team, TeamRef, User, UserId};
use crate::error::{ErrorCode, PublicError};
use crate::store::{DeleteUserOutcome, DeletedUser, Store, StoreError, UserQuery};

/// The page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 50;
/// The largest page size.
pub const MAX_PAGE: u32 = 200;

/// Why a page request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// The cursor is not one this server handed out.
    #[error("`cursor` is not valid: pass the `next_cursor` of the previous page as it is")]
    InvalidCursor,
    /// The page size is out of bounds.
    #[error("`limit` must be 1 to 200")]
    InvalidLimit,
}

impl PublicError for PageError {
    fn code(&self) -> ErrorCode {
        match self {
            PageError::InvalidCursor => ErrorCode::InvalidCursor,
            PageError::InvalidLimit => ErrorCode::InvalidRequest,
        }
    }

    fn extensions(&self) -> Vec<(&'static str, serde_json::Value)> {
        let field = match self {
            PageError::InvalidCursor => "cursor",
            PageError::InvalidLimit => "limit",
        };
        vec![("field", field.into())]
    }
}

/// Which page to read: after the row a cursor names, this many rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// The id of the last row of the previous page.
    pub after: Option<uuid::Uuid>,
    /// How many rows at most (1 to [`MAX_PAGE`]).
    pub limit: u32,
}

impl PageRequest {
    /// Parses a cursor (the `next_cursor` of a previous page) and a page size ([`DEFAULT_PAGE`]
    /// when absent).
    pub fn parse(cursor: Option<&str>, limit: Option<u32>) -> Result<Self, PageError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(PageError::InvalidLimit);
        }
        let after = cursor.map(decode_cursor).transpose()?;
        Ok(Self { after, limit })
    }

    /// The first page of the default size.
    pub fn first() -> Self {
        Self { after: None, limit: DEFAULT_PAGE }
    }

    /// One more row than the page holds: its presence says there is a next page.
    pub(crate) fn probe(&self) -> i64 {
        i64::from(self.limit) + 1
    }

    /// Cuts the rows read with [`PageRequest::probe`] to a page, with the cursor of the next one.
    pub(crate) fn page<T>(&self, mut rows: Vec<T>, id: impl Fn(&T) -> uuid::Uuid) -> Page<T> {
        let limit = self.limit as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| encode_cursor(id(last)))
        } else {
            None
        };
        Page { items: rows, next_cursor }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// The cursor of the next page; `None` on the last one.
    pub next_cursor: Option<String>,
}

/// A cursor: the base64url (no padding) of the last row's 16-byte id. Opaque to clients.
fn encode_cursor(id: uuid::Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<uuid::Uuid, PageError> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor.trim()).map_err(|_| PageError::InvalidCursor)?;
    uuid::Uuid::from_slice(&bytes).map_err(|_| PageError::InvalidCursor)
}

/// The filters of a user listing; every one that is set must hold.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// The email, compared by the rule linking uses (ASCII case folded).
    pub email: Option<Email>,
    /// An identity: the user holding it.
    pub identity: Option<(Issuer, Subject)>,
    /// Members of a team (id or slug).
    pub team: Option<TeamRef>,
    /// Disabled or enabled users only.
    pub disabled: Option<bool>,
}

/// Why an operator's user request was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserAdminError {
    /// No user has that id.
    #[error("no user has this id")]
    UserNotFound,
    /// The team filter names no team.
    #[error("no team has this id or slug")]
    TeamNotFound,
    /// The user is the last owner of a team with other members.
    #[error(
        "the user is the last owner of team `{0}`, which has other members; make another member an owner first, or remove them"
    )]
    LastOwner(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PublicError for UserAdminError {
    fn code(&self) -> ErrorCode {
        match self {
            UserAdminError::UserNotFound => ErrorCode::UserNotFound,
            UserAdminError::TeamNotFound => ErrorCode::TeamNotFound,
            UserAdminError::LastOwner(_) => ErrorCode::LastOwner,
            UserAdminError::Store(e) => e.code(),
        }
    }

    fn extensions(&self) -> Vec<(&'static str, serde_json::Value)> {
        match self {
            UserAdminError::LastOwner(team) => vec![("team", team.as_str().into())],
            _ => Vec::new(),
        }
    }
}

/// Why an admin token may not act for a user ([`Users::may_act`]).
#[derive(Debug, thiserror::Error)]
pub enum ActingError {
    /// No user has that id.
    #[error("no user has the id in `on_behalf_of`")]
    UserNotFound,
    /// The user is disabled.
    #[error("the user named in `on_behalf_of` is disabled")]
    UserDisabled,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PublicError for ActingError {
    fn code(&self) -> ErrorCode {
        match self {
            ActingError::UserNotFound => ErrorCode::UserNotFound,
            ActingError::UserDisabled => ErrorCode::UserDisabled,
            ActingError::Store(e) => e.code(),
        }
    }
}

/// The operators' user service.
#[derive(Debug, Clone)]
pub struct Users {
    store: Arc<dyn Store>,
    principals: Arc<PrincipalCache>,
}

impl Users {
    /// Creates the service; `principals` forgets deleted users at once.
    pub fn new(store: Arc<dyn Store>, principals: Arc<PrincipalCache>) -> Self {
        Self { store, principals }
    }

    /// Whether an admin token may act for `user` (`X-On-Behalf-Of`): refused when no user has
    /// that id, and when they are disabled — a disabled user does nothing, whoever asks for them
    /// (their connected accounts' credentials included). Read from the primary.
    pub async fn may_act(&self, user: UserId) -> Result<(), ActingError> {
        match self.store.get_user(user).await? {
            None => Err(ActingError::UserNotFound),
            Some(user) if user.disabled => Err(ActingError::UserDisabled),
            Some(_) => Ok(()),
        }
    }

    /// A page of the users matching `filter`, oldest first.
    pub async fn list(&self, filter: &UserFilter, page: PageRequest) -> Result<Page<User>, UserAdminError> {
        let team = match &filter.team {
            Some(team) => Some(self.store.find_team(team).await?.ok_or(UserAdminError::TeamNotFound)?.id),
            None => None,
        };
        let query = UserQuery {
            email: filter.email.clone(),
            identity: filter.identity.clone(),
            team,
            disabled: filter.disabled,
            after: page.after,
            limit: page.probe(),
        };
        let users = self.store.list_users(&query).await?;
        Ok(page.page(users, |u| u.id.as_uuid()))
    }

    /// Deletes a user with everything of theirs (see [`Store::delete_user`]); this instance
    /// forgets them at once, others within `cache.sync_interval_ms` (from the cache-invalidation
    /// log).
    pub async fn delete(&self, user: UserId) -> Result<DeletedUser, UserAdminError> {
        let store = self.store.clone();
        let deleted = change_to_end(
            &self.principals,
            async move { store.delete_user(user, super::now()).await },
            move |principals, done| match done {
                Ok(DeleteUserOutcome::Deleted(deleted)) => {
                    principals.invalidate_user(user);
                    for identity in &deleted.identities {
                        principals.invalidate_identity(&identity.issuer, &identity.subject);
                    }
                }
                // Which identities went, if the user did, is unknown: their principals go, and
                // their verified tokens then resolve to nobody.
                Err(_) => principals.invalidate_user(user),
                Ok(_) => {}
            },
        );
        match deleted.await? {
            DeleteUserOutcome::Deleted(deleted) => {
                tracing::info!(
                    user_id = %user,
                    identities = deleted.identities.len(),
                    left_teams = deleted.left_teams.len(),
                    deleted_teams = deleted.deleted_teams.len(),
                    "deleted a user"
                );
                Ok(deleted)
            }
            DeleteUserOutcome::NotFound => Err(UserAdminError::UserNotFound),
            DeleteUserOutcome::LastOwner(Team { slug, .. }) => Err(UserAdminError::LastOwner(slug.as_str().to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused() {
        let id = UserId::generate().as_uuid();
        let page = PageRequest::parse(Some(&encode_cursor(id)), Some(10)).unwrap();
        assert_eq!(page, PageRequest { after: Some(id), limit: 10 });
        assert_eq!(PageRequest::parse(None, None).unwrap(), PageRequest::first());
        for bad in ["", "!!", "AAAA", "not a cursor", &encode_cursor(id)[1..]] {
            assert_eq!(PageRequest::parse(Some(bad), None), Err(PageError::InvalidCursor), "{bad:?}");
        }
        for limit in [0, MAX_PAGE + 1] {
            assert_eq!(PageRequest::parse(None, Some(limit)), Err(PageError::InvalidLimit));
        }
        assert_eq!(PageRequest::parse(None, Some(MAX_PAGE)).unwrap().limit, MAX_PAGE);
    }

    #[test]
    fn a_page_has_a_next_cursor_only_when_more_rows_follow() {
        let page = PageRequest { after: None, limit: 2 };
        let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
        let full = page.page(ids.clone(), |id| *id);
        assert_eq!(full.items, ids[..2]);
        assert_eq!(full.next_cursor.as_deref().map(decode_cursor), Some(Ok(ids[1])));
        let last = page.page(ids[..2].to_vec(), |id| *id);
        assert_eq!(last.next_cursor, None);
    }
}
