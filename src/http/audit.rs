//! The audit log over HTTP: `GET /admin/audit` to read it, and the middleware that records every
//! successful change made with an admin token, on `/admin/…` or on behalf of a user (one table
//! below maps each route to its action and target), plus the helpers other handlers use to record
//! sign-ins and links.
//!
//! `GET /admin/audit?action=&actor=&target_kind=&target_id=&since=&until=&before=&limit=`: rows
//! latest first; pass `next_before` back as `before` for the next page.

use std::sync::Arc;

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::AppState;
use super::admin_auth::AdminActor;
use super::extract::{ApiQuery, page_limit};
use super::problem::ApiError;
use super::responses::AuditListResponse;
use crate::domain::UserId;
use crate::error::ErrorCode;
use crate::store::{ActorKind, AuditQuery, NewAuditEvent};

/// The routes (authentication is layered on by the caller).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/admin/audit", get(list_audit_events))
}

/// Most rows in one page, and the default.
const MAX_LIMIT: u32 = 200;
const DEFAULT_LIMIT: u32 = 50;

/// The query of `GET /admin/audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// Rows of this action, e.g. `user.disabled`.
    action: Option<String>,
    /// Rows whose actor has this id or name (`0`, `admin_tokens[0]`, a user id).
    actor: Option<String>,
    /// Rows whose target is of this kind (`user`, `team`, `client`…).
    target_kind: Option<String>,
    /// Rows whose target has this id.
    target_id: Option<String>,
    /// Rows at or after this RFC 3339 time.
    since: Option<String>,
    /// Rows before this RFC 3339 time.
    until: Option<String>,
    /// The `next_before` of the previous page.
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
    /// Rows per page, 1 to 200 (50 by default).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<u32>,
}

/// The audit log, latest first.
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    operation_id = "list_audit_events",
    summary = "The audit log: admin changes and security decisions, latest first, a page at a time.",
    params(AuditParams),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "A page of audit rows.", body = AuditListResponse)),
    security(("admin_token" = []), ("admin_token_header" = [])),
)]
async fn list_audit_events(
    State(state): State<Arc<AppState>>,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<AuditListResponse>, ApiError> {
    let query = parse_query(params)?;
    let (rows, next_before) = state.audit.list(&query).await?;
    Ok(Json(AuditListResponse { events: rows.into_iter().map(Into::into).collect(), next_before }))
}

fn parse_query(params: AuditParams) -> Result<AuditQuery, ApiError> {
    let limit = page_limit(params.limit, DEFAULT_LIMIT, MAX_LIMIT)?;
    let action = params.action.map(|a| filter(a, "action", 64, is_action)).transpose()?;
    // A user actor is recorded by its canonical id too; a name (`admin_tokens[0]`, `cli`) never
    // reads as a UUID.
    let actor = params.actor.map(|a| filter(a, "actor", 255, is_plain_text)).transpose()?.map(|a| canonical_id(&a));
    let target_kind = params.target_kind.map(|k| filter(k, "target_kind", 32, is_kind)).transpose()?;
    // As long as the longest target recorded: an issuer (`token.refused`'s target).
    let target_id =
        params.target_id.map(|t| filter(t, "target_id", crate::domain::Issuer::MAX_LEN, is_plain_text)).transpose()?;
    // Every id that is a UUID (a user's, team's, webhook's, identity's, profile's) is recorded in
    // its canonical form (see `UUID_FACTS`): found by any spelling `Uuid` parses. A client's id
    // is its own text, which may look like one.
    let target_id = match (target_id, target_kind.as_deref()) {
        (Some(id), kind) if kind != Some("client") => Some(canonical_id(&id)),
        (id, _) => id,
    };
    let since = params
        .since
        .map(|s| {
            time(&s).ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidSince, "`since` must be an RFC 3339 time").field("since")
            })
        })
        .transpose()?;
    let until = params
        .until
        .map(|s| {
            time(&s).ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidUntil, "`until` must be an RFC 3339 time").field("until")
            })
        })
        .transpose()?;
    if let (Some(since), Some(until)) = (since, until)
        && until <= since
    {
        return Err(ApiError::new(ErrorCode::InvalidUntil, "`until` must be after `since`").field("until"));
    }
    let before = super::extract::before_cursor(params.before.as_deref())?;
    Ok(AuditQuery { action, actor, target_kind, target_id, since, until, before, limit: i64::from(limit) })
}

fn filter(value: String, field: &str, max: usize, valid: fn(&str) -> bool) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > max || !valid(&value) {
        let rule = match field {
            "action" => "snake_case words separated by dots, like `user.disabled`",
            "target_kind" => "a snake_case word, like `user`",
            _ => "text without control characters",
        };
        return Err(ApiError::new(
            ErrorCode::InvalidAuditFilter,
            format!("`{field}` must be 1 to {max} bytes of {rule}"),
        )
        .field(field));
    }
    Ok(value)
}

fn is_action(value: &str) -> bool {
    value.split('.').all(is_kind)
}

fn is_kind(value: &str) -> bool {
    !value.is_empty() && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_plain_text(value: &str) -> bool {
    !value.chars().any(char::is_control)
}

fn time(value: &str) -> Option<DateTime<Utc>> {
    super::extract::query_time(value)
}

/// The request id of a request (set or kept by the request-id layer), for its audit rows.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    request_id_of(headers).map(str::to_owned)
}

/// [`request_id`], borrowed from the request's headers.
pub fn request_id_of(headers: &HeaderMap) -> Option<&str> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok())
}

/// The action of a request's audit row when its route alone does not tell (a `PATCH` of a user
/// disables, enables or edits it): the handler puts it in its answer's extensions, and it replaces
/// the action of [`rule_for`].
#[derive(Debug, Clone, Copy)]
pub struct AuditAction(pub &'static str);

/// Facts a handler adds to its request's audit row (an object, merged into the row's details):
/// what only the handler knows, like which of a user's fields a `PATCH` changed.
#[derive(Debug, Clone)]
pub struct AuditDetails(pub Map<String, Value>);

/// In a successful answer's extensions: the request changed nothing (every field it named already
/// had that value), so it gets no audit row, as it gets no event.
#[derive(Debug, Clone, Copy)]
pub struct NothingChanged;

/// Where a fact of an audit row comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A parameter of the matched route.
    Path(&'static str),
    /// A scalar member of the JSON answer (never one that may hold a secret).
    Body(&'static str),
}

/// What a successful admin request records.
#[derive(Debug, Clone, Copy)]
struct Rule {
    action: &'static str,
    target_kind: Option<&'static str>,
    target: Option<Source>,
    details: &'static [(&'static str, Source)],
    /// The change is made in steps, each committed (a webhook's deletion disables it first, then
    /// deletes its log in batches; a replay commits a page at a time): one that fails part way
    /// (a 5xx) may have been made in part, and is recorded as a failure with its code.
    in_steps: bool,
}

const fn rule(
    action: &'static str,
    target_kind: &'static str,
    target: Source,
    details: &'static [(&'static str, Source)],
) -> Rule {
    Rule { action, target_kind: Some(target_kind), target: Some(target), details, in_steps: false }
}

/// The facts that name a user, a team or a webhook by id (a team may be named by its slug too).
const UUID_FACTS: [&str; 3] = ["user_id", "team", "id"];

/// An id in the one form the audit log records and is searched by: a UUID in any spelling `Uuid`
/// parses (upper case, no hyphens, braces) lower-case and hyphenated; anything else (a slug, a
/// client's id) as it is.
fn canonical_id(id: &str) -> String {
    uuid::Uuid::try_parse(id).map_or_else(|_| id.to_owned(), |uuid| uuid.to_string())
}

/// The audit rule of each admin route that changes something. A route missing here is still
/// recorded, as `admin.request` with its method and route.
fn rule_for(method: &Method, route: &str) -> Rule {
    use Source::{Body, Path};
    match (method.as_str(), route) {
        ("POST", "/admin/users/bootstrap") => {
            rule("user.bootstrapped", "user", Body("user_id"), &[("created", Body("created"))])
        }
        ("POST", "/admin/users/{user_id}/bootstrap") => {
            rule("user.bootstrapped", "user", Path("user_id"), &[("created", Body("created"))])
        }
        // The handler names `user.disabled` or `user.enabled` when the request sets `disabled`.
        ("PATCH", "/admin/users/{user_id}") => rule("user.updated", "user", Path("user_id"), &[]),
        ("DELETE", "/admin/users/{user_id}") => rule("user.deleted", "user", Path("user_id"), &[]),
        ("POST", "/admin/teams") => rule("team.created", "team", Body("id"), &[("slug", Body("slug"))]),
        // The handler adds how many members the team had.
        ("DELETE", "/admin/teams/{team}") => rule("team.deleted", "team", Path("team"), &[]),
        ("POST", "/admin/teams/{team}/domains") => rule(
            "team.domain_claimed",
            "team",
            Path("team"),
            &[("domain", Body("domain")), ("verified", Body("verified"))],
        ),
        // The handler names the domain as it is kept (the path may spell it otherwise).
        ("DELETE", "/admin/teams/{team}/domains/{domain}") => rule("team.domain_released", "team", Path("team"), &[]),
        // The admin API's, and the same on behalf of a user (`X-On-Behalf-Of`).
        ("POST", "/admin/teams/{team}/members" | "/v1/teams/{team}/members") => {
            rule("team.member_added", "team", Path("team"), &[("user_id", Body("user_id")), ("role", Body("role"))])
        }
        ("DELETE", "/admin/teams/{team}/members/{user_id}" | "/v1/teams/{team}/members/{user_id}") => {
            rule("team.member_removed", "team", Path("team"), &[("user_id", Path("user_id"))])
        }
        ("PATCH", "/admin/teams/{team}/members/{user_id}" | "/v1/teams/{team}/members/{user_id}") => rule(
            "team.member_role_changed",
            "team",
            Path("team"),
            &[("user_id", Path("user_id")), ("role", Body("role"))],
        ),
        ("POST", "/admin/clients") => rule("client.created", "client", Body("client_id"), &[]),
        ("PATCH", "/admin/clients/{client_id}") => rule("client.updated", "client", Path("client_id"), &[]),
        ("DELETE", "/admin/clients/{client_id}") => rule("client.deleted", "client", Path("client_id"), &[]),
        ("POST", "/admin/clients/{client_id}/secret") => {
            // Whether the replaced secret still works, and until when: what an investigation of
            // a leak asks first.
            rule(
                "client.secret_rotated",
                "client",
                Path("client_id"),
                &[("previous_secret_expires_at", Body("previous_secret_expires_at"))],
            )
        }
        ("POST", "/admin/webhooks") => rule("webhook.created", "webhook", Body("id"), &[]),
        ("PATCH", "/admin/webhooks/{id}") => rule("webhook.updated", "webhook", Path("id"), &[]),
        ("DELETE", "/admin/webhooks/{id}") => rule("webhook.deleted", "webhook", Path("id"), &[]).in_steps(),
        ("POST", "/admin/webhooks/{id}/secret") => rule("webhook.secret_rotated", "webhook", Path("id"), &[]),
        ("POST", "/admin/webhooks/{id}/replay") => {
            rule("webhook.replayed", "webhook", Path("id"), &[("scheduled", Body("scheduled"))]).in_steps()
        }
        _ => Rule { action: "admin.request", target_kind: None, target: None, details: &[], in_steps: false },
    }
}

impl Rule {
    /// This rule, for a change made in steps ([`Rule::in_steps`]).
    const fn in_steps(self) -> Self {
        Rule { in_steps: true, ..self }
    }

    fn reads_body(&self) -> bool {
        matches!(self.target, Some(Source::Body(_)))
            || self.details.iter().any(|(_, from)| matches!(from, Source::Body(_)))
    }
}

/// Largest answer read to find the facts of an audit row (admin answers are far smaller).
const MAX_AUDITED_BODY: usize = 1 << 20;

/// Middleware on the OpenID Provider's routes: counts a refused client authentication (an OAuth
/// answer `invalid_client`, which carries its code for this) as a wrong admin token is counted.
pub async fn count_client_refusals(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.extensions().get::<ErrorCode>() == Some(&ErrorCode::InvalidClient) {
        state.audit.client_refused();
    }
    response
}

/// Middleware inside [`super::admin_auth::require_admin`], and on every other route for admin
/// tokens acting on behalf of a user: after a successful `POST`, `PUT`, `PATCH` or `DELETE` made
/// with an admin token, appends the row of [`rule_for`] with the token's position, the target,
/// the request id (and `on_behalf_of`); after one made in steps that failed part way
/// ([`Rule::in_steps`]), the same row as a failure with its code. Reads, other failures and
/// requests without an admin token write nothing.
pub async fn record_admin_action(
    State(state): State<Arc<AppState>>,
    params: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    if !matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
    // On `/admin/…`, authentication left the token's position; elsewhere an admin token acts on
    // behalf of a user, and anything else is not an admin request.
    let actor = match request.extensions().get::<AdminActor>().copied() {
        Some(actor) => actor,
        None if route.starts_with("/admin/") => return next.run(request).await,
        // Only where it names the user it acts for, on the routes that act for one (a team's,
        // under `/v1/teams/`): an admin token sent to a route that acts for nobody
        // (`/v1/auth/discover`, `/oauth/token`) changes nothing in anyone's name, whatever user
        // it names beside it.
        None => match admin_token_of(&state, request.headers()) {
            Some(actor) if route.starts_with("/v1/teams/") && on_behalf_of(&request).is_some() => actor,
            _ => return next.run(request).await,
        },
    };
    let on_behalf_of = (!route.starts_with("/admin/")).then(|| on_behalf_of(&request)).flatten();
    let request_id = request_id(request.headers());
    let params: Vec<(String, String)> =
        params.map(|p| p.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()).unwrap_or_default();
    // The change and its row go to their end together, in a task of their own: a client that
    // hangs up once the handler has begun (or a shutdown's drain closing its connection) must not
    // leave a change made and not recorded.
    let recorded = crate::run_to_end(async move {
        let response = next.run(request).await;
        let rule = rule_for(&method, &route);
        // A change made in steps that failed part way (the database, say) may have been made in
        // part, so it is recorded too, as a failure with its code. Other failures changed nothing.
        let failed = (rule.in_steps && response.status().is_server_error())
            .then(|| response.extensions().get::<ErrorCode>().copied().unwrap_or(ErrorCode::InternalError));
        if !(response.status().is_success() || failed.is_some())
            || response.extensions().get::<NothingChanged>().is_some()
        {
            return response;
        }
        let action = response.extensions().get::<AuditAction>().map_or(rule.action, |named| named.0);
        let (response, body) = if failed.is_none() && rule.reads_body() {
            let (parts, body) = response.into_parts();
            match axum::body::to_bytes(body, MAX_AUDITED_BODY).await {
                Ok(bytes) => {
                    let json = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
                    (Response::from_parts(parts, axum::body::Body::from(bytes)), json)
                }
                // Logged once, with its cause, as the 500 is made.
                Err(error) => return ApiError::internal(error).into_response(),
            }
        } else {
            (response, Value::Null)
        };
        let fact = |from: Source| -> Option<Value> {
            let value = match from {
                Source::Path(name) => params.iter().find(|(k, _)| k == name).map(|(_, v)| Value::String(v.clone())),
                Source::Body(name) => {
                    body.get(name).filter(|v| v.is_string() || v.is_boolean() || v.is_number()).cloned()
                }
            }?;
            // A user, team or webhook id is accepted in any form `Uuid` parses (upper case, no
            // hyphens, braces); it is recorded in the one form the audit log is searched by.
            let (Source::Path(name) | Source::Body(name)) = from;
            match value.as_str().filter(|_| UUID_FACTS.contains(&name)) {
                Some(id) => Some(Value::String(canonical_id(id))),
                None => Some(value),
            }
        };
        let mut details = Map::new();
        for (name, from) in rule.details {
            if let Some(value) = fact(*from) {
                details.insert((*name).to_owned(), value);
            }
        }
        if rule.target.is_none() {
            details.insert("method".into(), method.as_str().into());
            details.insert("route".into(), route.into());
        }
        if let Some(AuditDetails(added)) = response.extensions().get::<AuditDetails>() {
            details.extend(added.clone());
        }
        if let Some(user) = on_behalf_of {
            details.insert("on_behalf_of".into(), user.into());
        }
        let mut event = NewAuditEvent::new(ActorKind::AdminToken, action)
            .actor(Some(actor.id()), Some(actor.name()))
            .request(request_id);
        if let (Some(kind), Some(id)) = (rule.target_kind, rule.target.and_then(fact)) {
            let id = match id {
                Value::String(s) => s,
                other => other.to_string(),
            };
            event = event.target(kind, id);
        }
        if !details.is_empty() {
            event = event.details(Value::Object(details));
        }
        if let Some(code) = failed {
            event = event.failed(code.as_str());
        }
        state.audit.record_change(event).await;
        response
    });
    recorded.await.unwrap_or_else(|| shutting_down().into_response())
}

/// The admin token a request outside `/admin/…` carries, if any (a service acting on behalf of a
/// user). Unreadable credentials are the handler's to refuse, not this layer's.
fn admin_token_of(state: &AppState, headers: &HeaderMap) -> Option<AdminActor> {
    let credentials = super::credentials::Credentials::read(headers).ok()?;
    let index = state.admin_tokens.identify(credentials.admin_token()?)?;
    Some(AdminActor { index })
}

/// The user an admin token acts for (`X-On-Behalf-Of` or `?on_behalf_of=`), when it is a user id.
/// A blank value counts as absent, as it does for the handler (`caller::on_behalf_of`).
fn on_behalf_of(request: &Request) -> Option<String> {
    let header = request.headers().get("x-on-behalf-of").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let query = request.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "on_behalf_of").map(|(_, v)| v.into_owned())
    });
    let given = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
    given(&header).or(given(&query)).and_then(|v| v.parse::<uuid::Uuid>().ok()).map(|id| id.to_string())
}

/// A provider name fit for an audit row or a log line: a configured provider's name is
/// `a-z0-9-_`; anything else a client sent is left out.
pub fn provider_label(name: &str) -> Option<&str> {
    (!name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'))
    .then_some(name)
}

/// Records a refused sign-in or link callback. A callback whose state does not match a sign-in
/// started in this browser (`invalid_state` before the flow is known: scanners, replayed or
/// stale links, forged cookies) is counted, like refused tokens, since anyone can send one; so is a sign-in refused before
/// the provider vouched for an account (cancelled there, no code or one that does not exchange,
/// a mix-up of issuers or providers), since anyone can start one and send its callback back
/// that way, over and over. A failure once an account is known (a disabled user, a link
/// required), or of a link or connection (a signed-in user's, `actor`, who started it), gets a
/// row of its own. The
/// provider is named only when it is configured. Logged at info with the code and provider only.
pub async fn sign_in_failed(
    state: &AppState,
    headers: &HeaderMap,
    provider: &str,
    action: FlowAction,
    actor: Option<UserId>,
    code: ErrorCode,
) {
    if code.status().is_server_error() {
        return;
    }
    let before_an_account = matches!(
        code,
        ErrorCode::ProviderDenied
            | ErrorCode::ProviderRefused
            | ErrorCode::InvalidCode
            | ErrorCode::IssuerMismatch
            | ErrorCode::ProviderMismatch
    );
    // A callback that matched no flow comes as `SignIn` (its flow, and so its action, is not
    // known). A link or connection refused with `invalid_state` past the flow's match — a browser
    // no longer signed in as the user who started it — is the user's, and gets its row.
    if action == FlowAction::SignIn && (code == ErrorCode::InvalidState || before_an_account) {
        return sign_in_unmatched(state, provider, code);
    }
    let provider = provider_label(provider).filter(|name| state.flows.provider(Some(name)).is_ok());
    let action = match action {
        FlowAction::SignIn => crate::service::audit::SIGN_IN_FAILED,
        FlowAction::Link => "identity.link_failed",
        FlowAction::Connect => "auth_profile.connect_failed",
    };
    tracing::info!(code = code.as_str(), provider = provider.unwrap_or("-"), action, "sign-in refused");
    let mut details = Map::new();
    if let Some(provider) = provider {
        details.insert("provider".into(), provider.into());
    }
    if code == ErrorCode::LinkRequired {
        // The linking rule that decided: an account has this email, and the provider may not
        // link by email on its own.
        details.insert("rule".into(), "email_owned_by_existing_user".into());
    }
    let event = NewAuditEvent::new(ActorKind::User, action)
        .actor(actor.map(|user| user.to_string()), None)
        .request(request_id(headers))
        .failed(code.as_str())
        .details(Value::Object(details));
    state.audit.record(event).await;
}

/// What a refused provider flow was for, which names its audit row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowAction {
    /// Signing in: `sign_in.failed`.
    SignIn,
    /// Linking another identity: `identity.link_failed`.
    Link,
    /// Connecting an account to a profile: `auth_profile.connect_failed`.
    Connect,
}

/// Counts a refused callback that was not matched to a flow (its state was not taken: a
/// mismatch, or a query that does not parse), or one refused before the provider vouched for an
/// account: anyone can send those, so they get no row each.
pub fn sign_in_unmatched(state: &AppState, provider: &str, code: ErrorCode) {
    let provider = provider_label(provider).filter(|name| state.flows.provider(Some(name)).is_ok());
    let action = crate::service::audit::SIGN_IN_FAILED;
    tracing::info!(code = code.as_str(), provider = provider.unwrap_or("-"), action, "sign-in refused");
    state.audit.sign_in_refused(code, provider);
}

/// The answer of a change (and its audit row) cut off by the shutdown.
pub(super) fn shutting_down() -> ApiError {
    ApiError::new(ErrorCode::ShuttingDown, "this instance is shutting down; send requests to another")
}

/// Records a change of a team's members made by a member (an owner, or someone leaving) with
/// their own session or token; an admin token's, on behalf of a user or not, is recorded by
/// [`record_admin_action`] instead. `team` is the team as the path named it, as in the admin
/// token's rows.
pub async fn team_member_changed(
    state: &AppState,
    headers: &HeaderMap,
    acting: crate::domain::UserId,
    team: &str,
    action: &'static str,
    details: Value,
) {
    if admin_token_of(state, headers).is_some() {
        return;
    }
    let event = NewAuditEvent::new(ActorKind::User, action)
        .actor(Some(acting.to_string()), None)
        // A team id in its canonical form (as every other id is recorded), whatever the path's
        // spelling; a slug as named.
        .target("team", canonical_id(team))
        .request(request_id(headers))
        .details(details);
    state.audit.record_change(event).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_admin_change_route_has_its_own_action() {
        for (method, route) in [
            (Method::POST, "/admin/users/bootstrap"),
            (Method::PATCH, "/admin/users/{user_id}"),
            (Method::DELETE, "/admin/users/{user_id}"),
            (Method::POST, "/admin/teams"),
            (Method::DELETE, "/admin/teams/{team}"),
            (Method::POST, "/admin/clients/{client_id}/secret"),
            (Method::POST, "/admin/webhooks"),
            (Method::POST, "/admin/webhooks/{id}/secret"),
        ] {
            assert_ne!(rule_for(&method, route).action, "admin.request", "{method} {route}");
        }
        assert_eq!(rule_for(&Method::POST, "/admin/unknown").action, "admin.request");
    }

    #[test]
    fn filters_refuse_what_no_row_can_hold() {
        assert!(is_action("user.disabled") && is_action("sign_in.failed"));
        assert!(!is_action("User.disabled") && !is_action("user..x") && !is_action("user disabled"));
        assert!(is_kind("signing_key") && !is_kind("a-b"));
        assert!(!is_plain_text("a\nb"));
        assert_eq!(provider_label("google"), Some("google"));
        assert_eq!(provider_label("<script>"), None);
    }

    #[test]
    fn a_target_as_long_as_an_issuer_can_be_filtered_by() {
        let params = |target: String| AuditParams {
            action: None,
            actor: None,
            target_kind: Some("issuer".into()),
            target_id: Some(target),
            since: None,
            until: None,
            before: None,
            limit: None,
        };
        let issuer = format!("https://id.example.com/{}", "a".repeat(crate::domain::Issuer::MAX_LEN - 23));
        assert_eq!(issuer.len(), crate::domain::Issuer::MAX_LEN);
        assert_eq!(parse_query(params(issuer.clone())).unwrap().target_id, Some(issuer.clone()));
        assert!(parse_query(params(format!("{issuer}a"))).is_err());
    }
}
