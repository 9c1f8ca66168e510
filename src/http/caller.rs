//! Who a request acts for: a user's upstream bearer token (validated like `/v1/validate`), or
//! else their session cookie. Credentials are read through [`Credentials`] and [`cookie`], which
//! refuse a repeated or disagreeing credential.

use axum::http::HeaderMap;

use super::AppState;
use super::credentials::{Credentials, cookie};
use super::problem::ApiError;
use crate::domain::UserId;
use crate::error::ErrorCode;
use crate::service::sessions::LiveSession;

/// The user a request acts for or is about (their profile, teams, connected accounts and
/// identities). A bearer token (or `X-User-Token`) wins over a session cookie; a refused token is
/// refused, never passed over for the cookie. A repeated session cookie is refused even beside a
/// token. One of Tessera's own access tokens must have been issued for Tessera's API
/// ([`crate::service::validation::Validator::validate_acting`]): an app's token for itself
/// carries only what the user consented to give that app.
pub async fn acting_caller(state: &AppState, headers: &HeaderMap) -> Result<UserId, ApiError> {
    caller_of(state, headers, false).await
}

/// [`acting_caller`] for a change of the user's sign-in methods (link, unlink, primary): a
/// session must have signed in within [`RECENT_SIGN_IN`](crate::service::sessions::RECENT_SIGN_IN),
/// and so must the session one of Tessera's own access tokens was granted from (its
/// `auth_time`), else 403 `sign_in_again`. An upstream token is checked as for any other
/// request: the upstream issuer signed the user in for it, not a cookie of Tessera's.
pub async fn acting_caller_signed_in_lately(state: &AppState, headers: &HeaderMap) -> Result<UserId, ApiError> {
    caller_of(state, headers, true).await
}

/// 403 `sign_in_again`.
pub fn sign_in_again() -> ApiError {
    let minutes = crate::service::sessions::RECENT_SIGN_IN.num_minutes();
    ApiError::new(
        ErrorCode::SignInAgain,
        format!(
            "adding or removing a sign-in method needs a sign-in within the last {minutes} minutes: sign in \
             again (an app: authorize again with prompt=login)"
        ),
    )
}

/// 403 `sign_in_again` unless the session signed in lately: for a change of its sign-in methods.
pub fn require_recent(live: &LiveSession) -> Result<(), ApiError> {
    if live.signed_in_lately(crate::domain::now()) { Ok(()) } else { Err(sign_in_again()) }
}

async fn caller_of(state: &AppState, headers: &HeaderMap, lately: bool) -> Result<UserId, ApiError> {
    let credentials = Credentials::read(headers)?;
    let token = credentials.user_token();
    let session = cookie(headers, state.cookies.session())?;
    no_admin_beside_session(&credentials, session)?;
    if let Some(token) = token {
        let validated = state.validator.validate_acting(token).await?;
        // One of Tessera's own tokens was granted from a session: held to that session's
        // sign-in (its `auth_time`), or a carried-off cookie would get round the rule through
        // an app's authorization (a refresh keeps the grant's first `auth_time`).
        if lately
            && let Some(issued) = &validated.issued_for
            && !issued.signed_in_lately(crate::domain::now())
        {
            return Err(sign_in_again());
        }
        return Ok(validated.principal.user.id);
    }
    if let Some(session) = session
        && let Some(live) = state.sessions.resolve_session(session).await?
    {
        if lately {
            require_recent(&live)?;
        }
        return Ok(live.record.user_id);
    }
    Err(missing_credentials())
}

/// The session cookie of a request that carries no user token (which would win over it), for a
/// route that reads the session itself; `None` without one. Refused as in [`acting_caller`].
pub fn session_without_token<'h>(state: &AppState, headers: &'h HeaderMap) -> Result<Option<&'h str>, ApiError> {
    let credentials = Credentials::read(headers)?;
    let session = cookie(headers, state.cookies.session())?;
    no_admin_beside_session(&credentials, session)?;
    Ok(session.filter(|_| credentials.user_token().is_none()))
}

/// Where a user's own credential acts, a user named in `X-On-Behalf-Of` would be passed over in
/// silence, and a backend that meant to ask about that user would get the caller's answer: 400
/// `ambiguous_credentials`. A blank one names nobody, as everywhere else.
pub fn no_user_named(headers: &HeaderMap, query: Option<&str>) -> Result<(), ApiError> {
    let in_query = query.is_some_and(|query| {
        let named = url::form_urlencoded::parse(query.as_bytes()).filter(|(name, _)| name == "on_behalf_of");
        names_someone(named.map(|(_, value)| value.trim().is_empty()))
    });
    let sent = headers.get_all("x-on-behalf-of").iter();
    if in_query || names_someone(sent.map(|value| value.as_bytes().trim_ascii().is_empty())) {
        return Err(user_named());
    }
    Ok(())
}

/// Whether the values of one parameter (each told as blank or not) name a user: one that is not
/// blank, or two of any kind (as a repeated credential is refused everywhere).
fn names_someone(mut blank: impl Iterator<Item = bool>) -> bool {
    match (blank.next(), blank.next()) {
        (Some(blank), None) => !blank,
        (first, second) => first.is_some() && second.is_some(),
    }
}

fn user_named() -> ApiError {
    ApiError::new(
        ErrorCode::AmbiguousCredentials,
        "`X-On-Behalf-Of` and `?on_behalf_of=` go with the admin token, on the routes that act for a user; \
         this one answers for the caller's own credential",
    )
    .field("on_behalf_of")
}

/// Middleware for the `/v1/me…` routes, which answer for the caller's own credential only: a
/// user named in `X-On-Behalf-Of` or `?on_behalf_of=` is refused ([`no_user_named`]), not
/// ignored. (`/v1/validate` and `/v1/check`, the hottest paths, check in their handlers.)
pub async fn refuse_named_user(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Err(refused) = no_user_named(request.headers(), request.uri().query()) {
        return axum::response::IntoResponse::into_response(refused);
    }
    next.run(request).await
}

/// Middleware for the `/v1` routes that act for a user: the credentials are checked before
/// anything else of the request is read, so that an ambiguous credential is answered 400
/// `ambiguous_credentials` and a missing one 401 `missing_credentials` whatever the body or its
/// type, and nobody's body is parsed before they say who they are. (Validating the credential is
/// the handler's, which knows whether the route acts for a named user.)
pub async fn credentials_first(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Err(refused) = credentials_present(&state, request.headers(), request.uri().path(), request.uri().query()) {
        return axum::response::IntoResponse::into_response(refused);
    }
    next.run(request).await
}

fn credentials_present(state: &AppState, headers: &HeaderMap, path: &str, query: Option<&str>) -> Result<(), ApiError> {
    let credentials = Credentials::read(headers)?;
    let session = cookie(headers, state.cookies.session())?;
    // Where the session acts (`/v1/me…`) the admin token beside it leaves open who made the
    // request; on team routes the admin token acts for the user it names, whatever the cookie.
    if path == "/v1/me" || path.starts_with("/v1/me/") {
        no_admin_beside_session(&credentials, session)?;
    }
    let named: Vec<_> = query.map_or_else(Vec::new, |q| {
        url::form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k == "on_behalf_of").map(|(_, v)| v).collect()
    });
    if named.len() > 1 {
        return Err(ApiError::new(
            ErrorCode::AmbiguousCredentials,
            "`?on_behalf_of=` is given more than once; name one user",
        )
        .field("on_behalf_of"));
    }
    // The acting user named twice (`X-On-Behalf-Of` repeated, or disagreeing with the query) is
    // refused here too, before the body is read.
    on_behalf_of(headers, named.first().map(|v| v.as_ref()))?;
    if credentials.user_token().is_none() && credentials.admin_token().is_none() && session.is_none() {
        return Err(missing_credentials());
    }
    Ok(())
}

/// 401 `missing_credentials`: no token, and no live session.
pub fn missing_credentials() -> ApiError {
    ApiError::new(
        ErrorCode::MissingCredentials,
        "sign in, or send the user's token as `Authorization: Bearer <token>` or `X-User-Token: <token>`",
    )
    .challenge("Bearer realm=\"tessera\"")
}

/// `X-Admin-Token` acts for nobody where the session would: beside a session (and no user token)
/// it would leave open who made the request (the audit would credit the token, the change would
/// be the session user's): 400 `ambiguous_credentials`.
fn no_admin_beside_session(credentials: &Credentials<'_>, session: Option<&str>) -> Result<(), ApiError> {
    if credentials.user_token().is_none() && session.is_some() && credentials.admin_token().is_some() {
        return Err(ApiError::new(
            ErrorCode::AmbiguousCredentials,
            "send the session or `X-Admin-Token`, not both; with the admin token, name the user in \
             `X-On-Behalf-Of` where a route accepts it",
        ));
    }
    Ok(())
}

/// The user a profile or team request acts for: a service holding an admin token names the user
/// in `X-On-Behalf-Of` (or `?on_behalf_of=`); anyone else is their own user (see
/// [`acting_caller`]).
pub async fn acting_user(state: &AppState, headers: &HeaderMap, query: Option<&str>) -> Result<UserId, ApiError> {
    let credentials = Credentials::read(headers)?;
    let admin = credentials.admin_token().is_some_and(|token| state.admin_tokens.verify(token));
    if !admin {
        // A wrong `X-Admin-Token` is refused and counted as at the admin API, not taken for no
        // credential (a `Bearer` token that is no admin token is the user's own) — beside a
        // session cookie too: a signed-in user guessing admin tokens is counted like anyone.
        if credentials.admin_header_token().is_some() {
            state.audit.admin_token_refused(ErrorCode::InvalidCredentials);
            return Err(ApiError::new(ErrorCode::InvalidCredentials, "the admin token is not valid")
                .challenge("Bearer realm=\"tessera-admin\", error=\"invalid_token\""));
        }
        // Naming a user without the admin token would otherwise act, silently, for the caller.
        if on_behalf_of(headers, query)?.is_some() {
            return Err(ApiError::new(
                ErrorCode::AmbiguousCredentials,
                "`X-On-Behalf-Of` and `?on_behalf_of=` go with the admin token; a user's own credential acts \
                 for that user only",
            )
            .field("on_behalf_of"));
        }
        return acting_caller(state, headers).await;
    }
    // A repeated session cookie is refused beside the admin token too: one credential per request.
    cookie(headers, state.cookies.session())?;
    let named = on_behalf_of(headers, query)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::MissingField,
            "with the admin token, name the user to act for in `X-On-Behalf-Of` or `?on_behalf_of=`",
        )
        .field("on_behalf_of")
    })?;
    let user = named.parse().map_err(|_| invalid_user_id())?;
    // A disabled user acts in nothing (a session or token of theirs is refused as well), and an
    // unknown one is named as such rather than found in no team.
    state.users.may_act(user).await?;
    Ok(user)
}

/// The user an admin-token caller names: `X-On-Behalf-Of` (sent at most once) or
/// `?on_behalf_of=`; both at once must agree (400 `ambiguous_credentials` otherwise).
fn on_behalf_of<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all("x-on-behalf-of").iter();
    let header = values.next();
    if values.next().is_some() {
        return Err(ApiError::new(
            ErrorCode::AmbiguousCredentials,
            "the `X-On-Behalf-Of` header is sent more than once; name one user",
        )
        .field("on_behalf_of"));
    }
    let header =
        header.map(|v| v.to_str().map(str::trim)).transpose().map_err(|_| invalid_user_id())?.filter(|v| !v.is_empty());
    let query = query.map(str::trim).filter(|v| !v.is_empty());
    match (header, query) {
        (Some(header), Some(query)) if header != query => Err(ApiError::new(
            ErrorCode::AmbiguousCredentials,
            "`X-On-Behalf-Of` and `?on_behalf_of=` name different users; name one user",
        )
        .field("on_behalf_of")),
        (header, query) => Ok(header.or(query)),
    }
}

fn invalid_user_id() -> ApiError {
    ApiError::new(ErrorCode::InvalidUserId, "on_behalf_of must be a user id (a UUID)").field("on_behalf_of")
}

/// `?on_behalf_of=` for admin-token callers.
#[derive(Debug, serde::Deserialize)]
pub(super) struct OnBehalf {
    pub(super) on_behalf_of: Option<String>,
}

/// The acting member and the team a team route names.
pub(super) async fn actor(
    state: &AppState,
    headers: &HeaderMap,
    query: &OnBehalf,
    team: &str,
) -> Result<(UserId, crate::domain::TeamRef), ApiError> {
    let team = super::extract::parse_team(team)?;
    let user = acting_user(state, headers, query.on_behalf_of.as_deref()).await?;
    Ok((user, team))
}
