//! The account page, `GET /account` (where a sign-in without `return_to` lands): who I am, my
//! sign-in methods (link another, make primary, remove — refused for the last one, as the API
//! does), my teams, the accounts I connected (status, scopes; connect or reconnect — a fresh link
//! to the provider, or to the form of an `env` profile —, disconnect) and where I am signed in
//! (sign out everywhere else), and the apps of the OpenID Provider I let in (remove one: its grants
//! end, and a third-party app asks for consent again). Providers are shown with their icons.
//!
//! Its forms post to `/account/…` with the session's CSRF token (see [`super::csrf`]) and answer
//! `303 See Other` back to `/account?done=…`, which shows what was done. Those that take
//! something away (a sign-in method, a connection, an app's access) first answer with a page
//! that says what will end, whose button posts the form again, confirmed. Without a session, the
//! page sends the browser to the chooser, coming back here.

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::AppState;
use super::auth::redirect;
use super::csrf;
use super::extract::{ApiQuery, PageBytes, PagePath};
use super::login::{provider_href, provider_label};
use super::pages::icons::Icon;
use super::pages::{Action, Chrome, Message, errors, live_session, login_url};
use super::problem::ApiError;
use crate::domain::{ClientId, Identity, IdentityId, Issuer, ProfileKind, ProfileRef, ProfileStatus, TeamId, TeamRef};
use crate::error::ErrorCode;
use crate::service::auth_profiles::AuthProfileError;
use crate::service::provisioning::IdentityError;
use crate::service::sessions::LiveSession;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/account", get(show_account))
        .route("/account/identities/{identity}/unlink", post(unlink_identity))
        .route("/account/identities/{identity}/primary", post(make_identity_primary))
        .route("/account/connections/{team}/{profile}/revoke", post(revoke_connection))
        .route("/account/connections/{team}/{profile}/reconnect", post(reconnect_connection))
        .route("/account/sessions/sign-out-others", post(sign_out_others))
        .route("/account/apps/remove", post(remove_app))
}

struct IdentityRow {
    id: String,
    provider: String,
    icon: Icon,
    email: Option<String>,
    linked: String,
    last_used: String,
    primary: bool,
    /// This browser's session signed in with it: removing it signs the browser out.
    current: bool,
    /// Whether it may be removed: not the user's only identity, nor their only one a
    /// configured provider signs in with.
    removable: bool,
}

struct TeamRow {
    name: String,
    slug: String,
    role: &'static str,
    is_default: bool,
}

struct ConnectionRow {
    team_id: String,
    team_name: String,
    /// The profile's id: the page acts on the profile it showed, even if its slug moves meanwhile.
    id: String,
    display_name: String,
    connector: String,
    provider: String,
    icon: Icon,
    status_label: &'static str,
    status_class: &'static str,
    scopes: Vec<String>,
    refreshed: Option<String>,
    /// "Connect" (pending) or "Reconnect", when a fresh link can be made.
    connect_label: Option<&'static str>,
}

struct SessionRow {
    current: bool,
    provider: Option<String>,
    device: Option<String>,
    started: String,
    last_seen: String,
}

struct AppRow {
    client_id: String,
    name: String,
    scopes: Vec<String>,
    since: String,
    /// Whether and how long it has access (see [`account_page`]).
    reach: &'static str,
}

struct LinkButton {
    label: String,
    icon: Icon,
    href: String,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    chrome: Chrome,
    csrf: String,
    notice: Option<&'static str>,
    name: Option<String>,
    email: Option<String>,
    email_verified: bool,
    user_id: String,
    identities: Vec<IdentityRow>,
    /// Every identity may be removed (else a hint says why some may not).
    all_removable: bool,
    link_providers: Vec<LinkButton>,
    teams: Vec<TeamRow>,
    connections: Vec<ConnectionRow>,
    sessions: Vec<SessionRow>,
    other_sessions: usize,
    /// `None` while the OpenID Provider is off.
    apps: Option<Vec<AppRow>>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AccountQuery {
    done: Option<String>,
}

fn day(time: DateTime<Utc>) -> String {
    time.format("%-d %b %Y").to_string()
}

fn moment(time: DateTime<Utc>) -> String {
    time.format("%-d %b %Y, %H:%M UTC").to_string()
}

fn notice(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "linked" => "The sign-in method is linked to your account.",
        "unlinked" => "The sign-in method was removed.",
        "primary" => "Your primary sign-in method was changed.",
        "gone" => "That sign-in method is no longer linked to your account.",
        "connected" => "The account is connected. You can go back to the app, or close this window.",
        "revoked" => "The account was disconnected.",
        "connection-gone" => "That connection no longer exists: it was disconnected or removed meanwhile.",
        "signed-out-others" => "You are signed out everywhere else.",
        "app-removed" => "The app's access to your account was removed.",
        _ => return None,
    })
}

/// The browser's live session and its cookie value, or the response to send instead: the
/// chooser for a browser without one (coming back to `back_to`), an error page for an
/// ambiguous cookie or a store failure.
async fn session(state: &AppState, headers: &HeaderMap, back_to: &str) -> Result<(LiveSession, String), Response> {
    live_session(state, headers, back_to).await?.ok_or_else(|| redirect(&login_url(Some(back_to)), &[]))
}

#[utoipa::path(
    get,
    path = "/account",
    tag = "pages",
    operation_id = "show_account",
    summary = "The account page.",
    params(AccountQuery),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn show_account(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<ApiQuery<AccountQuery>, ApiError>,
) -> Response {
    let done = query.ok().and_then(|ApiQuery(q)| q.done);
    let (live, cookie_value) = match session(&state, &headers, "/account").await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match account_page(&state, &live, &cookie_value, done.as_deref()).await {
        Ok(page) => state.pages.render(StatusCode::OK, &page),
        Err(error) => state.pages.error_in(&headers, error, &signed_in()),
    }
}

/// Whether `identity` may be removed from a user with `identities`: not their only one, nor
/// their only one a provider signs in with (`sign_in`, the providers' issuers). The store decides
/// when one is removed; this only says which it would refuse.
fn removable(sign_in: &[Issuer], identities: &[Identity], identity: &Identity) -> bool {
    let others: Vec<&str> = identities.iter().filter(|i| i.id != identity.id).map(|i| i.issuer.as_str()).collect();
    crate::domain::may_unlink(identity.issuer.as_str(), &others, sign_in)
}

fn signed_in() -> errors::Context {
    errors::Context { return_to: Some("/account".into()), signed_in: true, retry: None }
}

async fn account_page(
    state: &AppState,
    live: &LiveSession,
    cookie_value: &str,
    done: Option<&str>,
) -> Result<AccountPage, ApiError> {
    let profile = &live.profile;
    let user = profile.user.id;
    let primary = profile.primary_identity_id.or_else(|| profile.identities.first().map(|i| i.id));
    let sign_in = state.flows.providers().sign_in_issuers();
    let identities: Vec<IdentityRow> = profile
        .identities
        .iter()
        .map(|identity| IdentityRow {
            removable: removable(&sign_in, &profile.identities, identity),
            id: identity.id.to_string(),
            provider: provider_label(&identity.provider),
            icon: state.pages.icon(&identity.provider),
            email: identity.email.clone(),
            linked: day(identity.created_at),
            last_used: day(identity.last_seen_at),
            primary: Some(identity.id) == primary,
            current: live.record.identity_id == Some(identity.id),
        })
        .collect();
    let link_providers = state
        .flows
        .providers()
        .all()
        // Providers already linked are left out (another account of one is rarely wanted).
        .filter(|p| !profile.identities.iter().any(|i| i.provider == p.name()))
        .map(|p| LinkButton {
            label: provider_label(p.name()),
            icon: state.pages.icon(p.name()),
            href: provider_href("link", p.name(), Some("/account?done=linked"), false),
        })
        .collect();
    let teams = profile
        .teams
        .iter()
        .map(|m| TeamRow {
            name: m.team.name.clone(),
            slug: m.team.slug.to_string(),
            role: m.role.as_str(),
            is_default: m.is_default,
        })
        .collect();
    let mut connections = Vec::new();
    let made = state.auth_profiles.made_by(user).await?;
    for membership in &profile.teams {
        // A team joined since the page's profile was read shows next time.
        for p in made.iter().filter(|p| p.team_id == membership.team.id) {
            let (status_label, status_class) = match p.status {
                ProfileStatus::Active => ("connected", "ok"),
                ProfileStatus::NeedsReauth => ("needs reconnecting", "warn"),
                ProfileStatus::PendingAuth => ("not connected yet", "off"),
                ProfileStatus::Revoked => ("disconnected", "off"),
            };
            connections.push(ConnectionRow {
                team_id: membership.team.id.to_string(),
                team_name: membership.team.name.clone(),
                id: p.id.to_string(),
                display_name: p.display_name.clone(),
                connector: state.auth_profiles.connector_label(&p.connector_key),
                provider: provider_label(&p.provider),
                icon: state.pages.icon(&p.provider),
                status_label,
                status_class,
                scopes: p.scopes.clone(),
                // Only a live token's end: a token is refreshed when next used, so an active
                // connection idle for a while holds one already past, and one that needs
                // reconnecting may hold one that will never be handed out.
                refreshed: p
                    .access_token_expires_at
                    .filter(|at| p.status == ProfileStatus::Active && *at > crate::domain::now())
                    .map(moment),
                // OAuth and env profiles get a fresh link (to the provider, or to the form).
                connect_label: match (p.profile_kind.is_oauth() || p.profile_kind == ProfileKind::Env, p.status) {
                    (false, _) => None,
                    (true, ProfileStatus::PendingAuth) => Some("Connect"),
                    (true, _) => Some("Reconnect"),
                },
            });
        }
    }
    let sessions: Vec<SessionRow> = state
        .sessions
        .list(user)
        .await?
        .into_iter()
        .map(|s| SessionRow {
            current: s.token_hash == live.hash,
            provider: s.provider.as_deref().map(provider_label),
            device: s.device.clone(),
            started: moment(s.created_at),
            last_seen: moment(s.last_seen_at),
        })
        .collect();
    let other_sessions = sessions.iter().filter(|s| !s.current).count();
    let apps = match &state.op {
        Some(op) => Some(
            op.apps_of(user)
                .await?
                .into_iter()
                .map(|app| AppRow {
                    client_id: app.client_id,
                    name: app.client_name,
                    // Whether it keeps access while signed out is said beside, from its grants as
                    // they are (a remembered consent may name `offline_access` still).
                    scopes: app
                        .scopes
                        .iter()
                        .filter(|scope| *scope != crate::service::op::provider::OFFLINE_ACCESS)
                        .map(|scope| super::pages::scope_in_words(scope))
                        .collect(),
                    since: day(app.since),
                    reach: match (app.active, app.offline, app.first_party) {
                        (true, true, _) => "keeps access while you are signed out",
                        (true, false, _) => "has access until you sign out",
                        (false, _, false) => "no access now; your consent is remembered",
                        (false, _, true) => "no access now",
                    },
                })
                .collect(),
        ),
        None => None,
    };
    Ok(AccountPage {
        chrome: state.pages.chrome(true),
        csrf: csrf::token(cookie_value),
        notice: notice(done),
        name: profile.user.name.clone(),
        email: profile.user.email.clone(),
        email_verified: profile.user.email_verified,
        user_id: user.to_string(),
        all_removable: identities.iter().all(|i| i.removable),
        identities,
        link_providers,
        teams,
        connections,
        sessions,
        other_sessions,
        apps,
    })
}

/// A form post of the account page: the live session, after the CSRF check.
async fn form(state: &AppState, headers: &HeaderMap, body: &Bytes) -> Result<LiveSession, Response> {
    // Without a live session, the chooser says that nothing was done (a "sign out everywhere
    // else" that did nothing must not pass for done).
    let ended = || redirect(crate::http::login::ENDED_BEFORE_A_FORM, &[]);
    let (live, cookie_value) = live_session(state, headers, "/account").await?.ok_or_else(ended)?;
    let fields = csrf::form_fields(body);
    csrf::check(headers, &cookie_value, csrf::field(&fields, csrf::FIELD))
        .map_err(|error| state.pages.error_in(headers, error, &signed_in()))?;
    Ok(live)
}

fn parse_identity(value: &str) -> Result<IdentityId, ApiError> {
    value.parse().map_err(|_| ApiError::new(ErrorCode::IdentityNotFound, "no identity has this id"))
}

fn parse_connection(team: &str, profile: &str) -> Result<(TeamRef, ProfileRef), ApiError> {
    let not_found = || ApiError::new(ErrorCode::ProfileNotFound, "no connected account has this id");
    let team: TeamId = team.parse().map_err(|_| not_found())?;
    Ok((TeamRef::Id(team), ProfileRef::Id(profile.parse().map_err(|_| not_found())?)))
}

/// Runs an account action and answers with the account page's notice, or an error page.
async fn act<F>(state: &AppState, headers: &HeaderMap, body: &Bytes, action: F) -> Response
where
    F: AsyncFnOnce(&LiveSession) -> Result<String, ApiError>,
{
    match form(state, headers, body).await {
        Ok(live) => finish(state, headers, action(&live).await),
        Err(response) => response,
    }
}

/// The answer to an account action: back to the account page's notice (or where the action
/// says), or an error page.
fn finish(state: &AppState, headers: &HeaderMap, done: Result<String, ApiError>) -> Response {
    match done {
        Ok(to) => redirect(&to, &[]),
        Err(error) => state.pages.error_in(headers, error, &signed_in()),
    }
}

/// The field of a confirmed form: set by the button of its confirmation page.
const CONFIRMED: &str = "confirmed";

/// What a form that takes something away asks before it does (see [`act_confirmed`]).
enum Ask {
    /// Confirm: the page's title, what will end (in plain words), and its button's label.
    Confirm { title: String, paragraphs: Vec<String>, button: String },
    /// Nothing is left to take away (removed meanwhile, in another tab): back to the account
    /// page's notice at this address, which says it was gone already.
    Gone(&'static str),
}

/// Runs an account action that takes something away (a sign-in method, a connection, an app's
/// access), once confirmed: its form, posted from the account page, answers with a page that
/// says what will end, with a button that posts the same form again (`path`, the CSRF token and
/// the fields named in `carry`) with [`CONFIRMED`] — and Cancel, back to the account page. A
/// click on the wrong row's button takes nothing away.
async fn act_confirmed<A, F>(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    (path, carry): (&str, &[&str]),
    ask: A,
    action: F,
) -> Response
where
    A: AsyncFnOnce(&LiveSession) -> Result<Ask, ApiError>,
    F: AsyncFnOnce(&LiveSession) -> Result<String, ApiError>,
{
    let live = match form(state, headers, body).await {
        Ok(live) => live,
        Err(response) => return response,
    };
    let fields = csrf::form_fields(body);
    if csrf::field(&fields, CONFIRMED) == Some("yes") {
        return finish(state, headers, action(&live).await);
    }
    let (title, paragraphs, button) = match ask(&live).await {
        Ok(Ask::Confirm { title, paragraphs, button }) => (title, paragraphs, button),
        Ok(Ask::Gone(to)) => return redirect(to, &[]),
        Err(error) => return finish(state, headers, Err(error)),
    };
    let mut posted: Vec<(String, String)> =
        fields.into_iter().filter(|(name, _)| name == csrf::FIELD || carry.contains(&name.as_str())).collect();
    posted.push((CONFIRMED.to_owned(), "yes".to_owned()));
    let confirm = Action { fields: posted, danger: true, ..Action::new(button, path) };
    let message = Message { title, paragraphs, actions: vec![confirm], signed_in: true, code: None };
    state.pages.message(StatusCode::OK, message.action("Cancel", "/account"))
}

#[utoipa::path(
    post,
    path = "/account/identities/{identity}/unlink",
    tag = "pages",
    operation_id = "account_unlink_identity",
    summary = "Unlinks an identity (form; asks to confirm first).",
    params(("identity" = String, Path, description = "An identity id (UUID)")),
    request_body(content = crate::http::openapi::ConfirmedForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn unlink_identity(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PagePath(identity): PagePath<String>,
    PageBytes(body): PageBytes,
) -> Response {
    let path = format!("/account/identities/{identity}/unlink");
    let ask = async |live: &LiveSession| {
        super::caller::require_recent(live)?;
        let id = parse_identity(&identity)?;
        let Some(found) = live.profile.identities.iter().find(|i| i.id == id) else {
            return Ok(Ask::Gone("/account?done=gone"));
        };
        if !removable(&state.flows.providers().sign_in_issuers(), &live.profile.identities, found) {
            return Err(IdentityError::LastIdentity.into());
        }
        let provider = provider_label(&found.provider);
        let mut paragraphs = vec![match &found.email {
            Some(email) => format!("You will no longer be able to sign in with {provider} ({email})."),
            None => format!("You will no longer be able to sign in with {provider}."),
        }];
        if live.record.identity_id == Some(id) {
            paragraphs.push(
                "This browser signed in with it, so it will be signed out: sign in again with another of your methods."
                    .into(),
            );
        }
        paragraphs.push("You can link it again later from your account page.".into());
        let button = format!("Remove {provider} sign-in");
        Ok(Ask::Confirm { title: format!("Remove your {provider} sign-in?"), paragraphs, button })
    };
    act_confirmed(&state, &headers, &body, (&path, &[]), ask, async |live| {
        super::caller::require_recent(live)?;
        let user = live.profile.user.id;
        let identity = parse_identity(&identity)?;
        let sign_in = state.flows.providers().sign_in_issuers();
        let unlinked =
            state.provisioner.unlink_identity(user, identity, &sign_in, super::audit::request_id(&headers)).await;
        match unlinked {
            // The session's own sign-in method: the unlink ended this session too, so the
            // chooser says why the browser must sign in again.
            Ok(_) if live.record.identity_id == Some(identity) => {
                Ok(crate::http::login::SIGNED_OUT_BY_UNLINK.to_owned())
            }
            // Gone already (a double click whose first answer the browser dropped, another tab):
            // the end asked for, as for an app's removal.
            Ok(_) | Err(IdentityError::NotFound) => Ok("/account?done=unlinked".to_owned()),
            Err(error) => Err(error.into()),
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/account/identities/{identity}/primary",
    tag = "pages",
    operation_id = "account_make_identity_primary",
    summary = "Makes an identity primary (form).",
    params(("identity" = String, Path, description = "An identity id (UUID)")),
    request_body(content = crate::http::openapi::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn make_identity_primary(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PagePath(identity): PagePath<String>,
    PageBytes(body): PageBytes,
) -> Response {
    act(&state, &headers, &body, async |live| {
        super::caller::require_recent(live)?;
        match state.provisioner.set_primary_identity(live.profile.user.id, parse_identity(&identity)?).await {
            Ok(_) => Ok("/account?done=primary".to_owned()),
            // Removed meanwhile (in another tab): the page says so, rather than "page not found".
            Err(IdentityError::NotFound) => Ok("/account?done=gone".to_owned()),
            Err(error) => Err(error.into()),
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/account/connections/{team}/{profile}/revoke",
    tag = "pages",
    operation_id = "revoke_connection",
    summary = "Revokes a connection (form; asks to confirm first).",
    params(("team" = String, Path, description = "A team id (UUID)"), ("profile" = String, Path, description = "An auth profile id (UUID)")),
    request_body(content = crate::http::openapi::ConfirmedForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn revoke_connection(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PagePath((team, profile)): PagePath<(String, String)>,
    PageBytes(body): PageBytes,
) -> Response {
    let path = format!("/account/connections/{team}/{profile}/revoke");
    let ask = async |live: &LiveSession| {
        let (team_ref, profile_ref) = parse_connection(&team, &profile)?;
        let found = match state.auth_profiles.get(&team_ref, live.profile.user.id, &profile_ref).await {
            Ok(found) => found,
            Err(AuthProfileError::ProfileNotFound | AuthProfileError::TeamNotFound) => {
                return Ok(Ask::Gone("/account?done=connection-gone"));
            }
            Err(error) => return Err(error.into()),
        };
        let connector = state.auth_profiles.connector_label(&found.connector_key);
        let team = live.profile.teams.iter().find(|m| m.team.id == found.team_id);
        let team = team.map(|m| format!(" in {}", m.team.name)).unwrap_or_default();
        let paragraphs = vec![
            format!(
                "Tessera will delete the credentials it keeps for {connector}{team}: the apps that act for you with this connection stop working until you connect it again."
            ),
            "You can connect it again later from your account page.".into(),
        ];
        let title = format!("Disconnect {}?", found.display_name);
        Ok(Ask::Confirm { title, paragraphs, button: "Disconnect".into() })
    };
    act_confirmed(&state, &headers, &body, (&path, &[]), ask, async |live| {
        let (team, profile) = parse_connection(&team, &profile)?;
        let request_id = super::audit::request_id_of(&headers);
        match state.auth_profiles.revoke(&team, live.profile.user.id, &profile, request_id).await {
            // Revoked already (a double click, another tab; with the team, or the member's place
            // in it): the end asked for.
            Ok(()) | Err(AuthProfileError::ProfileNotFound | AuthProfileError::TeamNotFound) => {
                Ok("/account?done=revoked".to_owned())
            }
            Err(error) => Err(error.into()),
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/account/connections/{team}/{profile}/reconnect",
    tag = "pages",
    operation_id = "reconnect_connection",
    summary = "Reconnects a connection (form).",
    params(("team" = String, Path, description = "A team id (UUID)"), ("profile" = String, Path, description = "An auth profile id (UUID)")),
    request_body(content = crate::http::openapi::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn reconnect_connection(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PagePath((team, profile)): PagePath<(String, String)>,
    PageBytes(body): PageBytes,
) -> Response {
    act(&state, &headers, &body, async |live| {
        let (team, profile) = parse_connection(&team, &profile)?;
        match state.auth_profiles.connect_link(&team, live.profile.user.id, &profile, false).await {
            Ok((_, link)) => Ok(link.url.expose_secret().to_owned()),
            // Removed meanwhile (in another tab, by a team admin, with the team or the member's
            // place in it): said on the account page, as a disconnection sent twice is, not as
            // a mistyped link.
            Err(AuthProfileError::ProfileNotFound | AuthProfileError::TeamNotFound) => {
                Ok("/account?done=connection-gone".to_owned())
            }
            Err(error) => Err(error.into()),
        }
    })
    .await
}

#[utoipa::path(
    post,
    path = "/account/sessions/sign-out-others",
    tag = "pages",
    operation_id = "sign_out_others",
    summary = "Signs out every other session (form).",
    request_body(content = crate::http::openapi::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn sign_out_others(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    PageBytes(body): PageBytes,
) -> Response {
    act(&state, &headers, &body, async |live| {
        Ok(match state.sessions.revoke_others(live.profile.user.id, &live.hash).await? {
            Some(_) => "/account?done=signed-out-others".to_owned(),
            // This browser was signed out meanwhile (by another's click, say): as if it had been
            // before it asked — nothing done.
            None => crate::http::login::ENDED_BEFORE_A_FORM.to_owned(),
        })
    })
    .await
}

#[utoipa::path(
    post,
    path = "/account/apps/remove",
    tag = "pages",
    operation_id = "remove_app",
    summary = "Removes an app's access to the account (form: `csrf`, `client`; asks to confirm first).",
    request_body(content = crate::http::openapi::RemoveAppForm, content_type = "application/x-www-form-urlencoded"),
    responses(crate::http::openapi::PageResponses),
    security(("session" = [])),
)]
async fn remove_app(State(state): State<Arc<AppState>>, headers: HeaderMap, PageBytes(body): PageBytes) -> Response {
    let fields = csrf::form_fields(&body);
    // The id travels in the form, not the path: an id such as `..` would not survive a path.
    let client = || {
        let client = csrf::field(&fields, "client").and_then(|id| ClientId::parse(id).ok());
        match (&state.op, client) {
            (Some(op), Some(client)) => Ok((op, client)),
            _ => Err(ApiError::new(ErrorCode::ClientNotFound, "no app has this id")),
        }
    };
    let ask = async |live: &LiveSession| {
        let (op, client) = client()?;
        let apps = op.apps_of(live.profile.user.id).await?;
        // Nothing left to remove (a second click, another tab) is the end asked for.
        let Some(app) = apps.into_iter().find(|app| app.client_id == client.as_str()) else {
            return Ok(Ask::Gone("/account?done=app-removed"));
        };
        let name = app.client_name;
        let mut paragraphs = vec![format!(
            "{name} will no longer have access to your account: the access it has now ends{}.",
            if app.offline { ", including what it keeps while you are signed out" } else { "" }
        )];
        paragraphs.push(match app.first_party {
            true => format!("To use {name} again, sign in to it again."),
            false => format!("To use {name} again, sign in to it again: it will ask for your consent again."),
        });
        Ok(Ask::Confirm { title: format!("Remove {name}'s access?"), paragraphs, button: "Remove access".into() })
    };
    act_confirmed(&state, &headers, &body, ("/account/apps/remove", &["client"]), ask, async |live| {
        let (op, client) = client()?;
        // Nothing left to remove (a second click, another tab) is the end asked for.
        op.remove_app(live.profile.user.id, client.as_str(), super::audit::request_id(&headers)).await?;
        Ok("/account?done=app-removed".to_owned())
    })
    .await
}
