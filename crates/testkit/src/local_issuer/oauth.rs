//! The local issuer as an OpenID provider: the authorization-code flow with PKCE S256, refresh
//! tokens, userinfo and revocation — and knobs to make it misbehave in the ways tests need.
//!
//! `/authorize` signs "the next user" in at once (no login page) and redirects back with a code.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::json;

use super::{IssuerState, LocalIssuer};

/// The user `/authorize` signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubUser {
    /// `sub`.
    pub subject: String,
    /// `email`, if any.
    pub email: Option<String>,
    /// `email_verified`.
    pub email_verified: bool,
    /// `name`, if any.
    pub name: Option<String>,
    /// `preferred_username`, if any.
    pub username: Option<String>,
}

impl StubUser {
    /// A user with a subject and a verified email.
    pub fn new(subject: &str, email: &str) -> Self {
        Self {
            subject: subject.to_owned(),
            email: Some(email.to_owned()),
            email_verified: true,
            name: None,
            username: None,
        }
    }
}

/// A way to spoil the next id_token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// A nonce other than the one sent to `/authorize`.
    WrongNonce,
    /// An audience other than the client.
    WrongAudience,
    /// The client as its audience, but `azp` naming another client.
    OtherAuthorizedParty,
    /// Two audiences, the client and `other-api`, with `azp` naming the client.
    ExtraAudience,
    /// Another issuer.
    WrongIssuer,
    /// Already expired.
    Expired,
    /// Stamped as issued two minutes from now (`iat`), beyond a minute's leeway.
    IssuedInTheFuture,
    /// Without `iat`.
    NoIssuedAt,
    /// Signed with a key the JWKS does not publish, under a published `kid`.
    ForgedSignature,
    /// An `auth_time` some 30,000 years before 1970: a number, but no time a database keeps.
    AncientAuthTime,
    /// Valid, but without the email (userinfo has it, with the user's `email_verified`) and with
    /// `email_verified: true` of its own.
    EmailOnlyInUserinfo,
}

/// A failure of the next token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFault {
    /// `400 {"error": "invalid_grant"}`.
    InvalidGrant,
    /// A server error status.
    ServerError(u16),
    /// `400 {"error": <code>}`, another error than `invalid_grant` (Zoom's `invalid_request`).
    Error(&'static str),
}

/// How long ago the user's session at the stub began, unless they sign in again.
pub const UPSTREAM_SESSION_AGE_SECONDS: i64 = 600;

struct PendingCode {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    user: StubUser,
    scope: String,
    /// Whether the authorization request carried every parameter a refresh token needs.
    offline: bool,
    /// When the user authenticated, for the id_token's `auth_time`.
    auth_time: i64,
}

#[derive(Default)]
pub(super) struct OAuthState {
    next_user: std::sync::Mutex<Option<StubUser>>,
    codes: std::sync::Mutex<HashMap<String, PendingCode>>,
    refresh_tokens: std::sync::Mutex<HashMap<String, (StubUser, String)>>,
    access_tokens: std::sync::Mutex<HashMap<String, StubUser>>,
    client: std::sync::Mutex<Option<(String, String)>>,
    tamper: std::sync::Mutex<Option<Tamper>>,
    faults: std::sync::Mutex<Vec<TokenFault>>,
    send_iss: AtomicBool,
    rotate_refresh_tokens: AtomicBool,
    no_refresh_token_on_code: AtomicBool,
    ignore_reauthentication: AtomicBool,
    fractional_auth_time: AtomicBool,
    refuse_userinfo: AtomicBool,
    refusals_in_a_200: AtomicBool,
    failure_in_a_200: std::sync::Mutex<Option<String>>,
    account_in_token_answers: AtomicBool,
    granted_scope: std::sync::Mutex<Option<String>>,
    refresh_token_needs: std::sync::Mutex<Vec<(String, String)>>,
    token_delay_ms: AtomicU64,
    answer_delay_ms: AtomicU64,
    revocation_delay_ms: AtomicU64,
    access_token_ttl: AtomicU64,
    code_exchanges: AtomicU64,
    refreshes: AtomicU64,
    revocations: AtomicU64,
    /// The `token_type_hint` of each revocation request, in order ("" without one).
    revocation_hints: std::sync::Mutex<Vec<String>>,
}

impl OAuthState {
    pub(super) fn sends_iss(&self) -> bool {
        self.send_iss.load(Ordering::SeqCst)
    }
}

pub(super) fn routes() -> Router<Arc<IssuerState>> {
    Router::new()
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/userinfo", get(userinfo))
        .route("/revoke", post(revoke))
}

impl LocalIssuer {
    /// Whether `prompt=login` and `max_age` are ignored, as by a provider that answers from its
    /// existing session: the id_token's `auth_time` is then that session's start,
    /// [`UPSTREAM_SESSION_AGE_SECONDS`] ago.
    pub fn ignore_reauthentication(&self, on: bool) {
        self.state.oauth.ignore_reauthentication.store(on, Ordering::SeqCst);
    }

    /// Whether the id_token's `auth_time` has a fraction of a second (half a second later), as
    /// a NumericDate may.
    pub fn fractional_auth_time(&self, on: bool) {
        self.state.oauth.fractional_auth_time.store(on, Ordering::SeqCst);
    }

    /// Registers the one client allowed at the token endpoint (otherwise any client is).
    pub fn set_client(&self, client_id: &str, client_secret: &str) {
        *self.state.oauth.client.lock().expect("lock") = Some((client_id.to_owned(), client_secret.to_owned()));
    }

    /// The user the next `/authorize` signs in.
    pub fn set_next_user(&self, user: StubUser) {
        *self.state.oauth.next_user.lock().expect("lock") = Some(user);
    }

    /// Spoils the next id_token.
    pub fn tamper_next_id_token(&self, tamper: Tamper) {
        *self.state.oauth.tamper.lock().expect("lock") = Some(tamper);
    }

    /// Makes the next token request fail; several calls queue several failures.
    pub fn fail_next_token_request(&self, fault: TokenFault) {
        self.state.oauth.faults.lock().expect("lock").push(fault);
    }

    /// Sends the RFC 9207 `iss` with authorization responses, and advertises it.
    pub fn send_iss(&self, on: bool) {
        self.state.oauth.send_iss.store(on, Ordering::SeqCst);
    }

    /// Issues a new refresh token on every refresh (and revokes the old one).
    pub fn rotate_refresh_tokens(&self, on: bool) {
        self.state.oauth.rotate_refresh_tokens.store(on, Ordering::SeqCst);
    }

    /// Whether a code exchange issues a refresh token (on by default). Off: like Google after
    /// the first consent, the answer has none.
    pub fn refresh_token_on_code_exchange(&self, on: bool) {
        self.state.oauth.no_refresh_token_on_code.store(!on, Ordering::SeqCst);
    }

    /// Issues a refresh token on a code exchange only when the authorization request carried
    /// all of `params` — as Google, which needs `access_type=offline` and `prompt=consent` for
    /// one after the first consent.
    pub fn refresh_token_only_with(&self, params: &[(&str, &str)]) {
        *self.state.oauth.refresh_token_needs.lock().expect("lock") =
            params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    }

    /// Makes every token request take this long.
    pub fn set_token_delay(&self, delay: Duration) {
        self.state.oauth.token_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Makes every token request decided at once (a refresh token used, a new one issued) but
    /// answered this much later: a provider whose answer is on its way back.
    pub fn set_answer_delay(&self, delay: Duration) {
        self.state.oauth.answer_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The `expires_in` of new access tokens (default 3600 s).
    pub fn set_access_token_ttl(&self, seconds: u64) {
        self.state.oauth.access_token_ttl.store(seconds, Ordering::SeqCst);
    }

    /// Whether token answers name the user's account (`"account": {"id": subject}`), as
    /// providers whose profile is read from the token answer do (Notion's `owner`, Slack's
    /// `authed_user`).
    pub fn name_account_in_token_answers(&self, on: bool) {
        self.state.oauth.account_in_token_answers.store(on, Ordering::SeqCst);
    }

    /// The `scope` that token responses say was granted (none by default: the answer does not
    /// say, meaning "what was asked for").
    pub fn grant_scope(&self, scope: Option<&str>) {
        *self.state.oauth.granted_scope.lock().expect("lock") = scope.map(str::to_owned);
    }

    /// Forgets every access token issued so far (userinfo refuses them with 401
    /// `invalid_token`); refresh tokens keep working.
    pub fn revoke_access_tokens(&self) {
        self.state.oauth.access_tokens.lock().expect("lock").clear();
    }

    /// Makes the userinfo endpoint refuse every token with 401, as a provider's user endpoint
    /// does for a token issued for another audience, while refreshes go on working.
    pub fn refuse_userinfo(&self, refuse: bool) {
        self.state.oauth.refuse_userinfo.store(refuse, Ordering::SeqCst);
    }

    /// Makes the userinfo endpoint refuse a token as Slack's `auth.test` does: `200 {"ok": false,
    /// "error": "token_revoked"}`, not a 401.
    pub fn refuse_userinfo_in_a_200(&self, on: bool) {
        self.state.oauth.refusals_in_a_200.store(on, Ordering::SeqCst);
    }

    /// Makes the userinfo endpoint answer every token, good or not, with `200 {"ok": false,
    /// "error": error}`, as Slack's `auth.test` answers its own outages (`service_unavailable`);
    /// `None` stops it.
    pub fn fail_userinfo_in_a_200(&self, error: Option<&str>) {
        *self.state.oauth.failure_in_a_200.lock().expect("lock") = error.map(str::to_owned);
    }

    /// Forgets every access and refresh token issued so far.
    pub fn revoke_all_tokens(&self) {
        self.revoke_access_tokens();
        self.state.oauth.refresh_tokens.lock().expect("lock").clear();
    }

    /// How many codes were exchanged.
    pub fn code_exchanges(&self) -> u64 {
        self.state.oauth.code_exchanges.load(Ordering::SeqCst)
    }

    /// How many refresh-token grants were answered (successfully or not).
    pub fn refreshes(&self) -> u64 {
        self.state.oauth.refreshes.load(Ordering::SeqCst)
    }

    /// The `token_type_hint` of each revocation request so far, in order ("" without one).
    pub fn revocation_hints(&self) -> Vec<String> {
        self.state.oauth.revocation_hints.lock().expect("lock").clone()
    }

    /// Makes the revocation endpoint answer after `delay`, counting a revocation only then: one
    /// whose caller hangs up first is not made (its handler is dropped with the connection).
    pub fn set_revocation_delay(&self, delay: Duration) {
        self.state.oauth.revocation_delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// How many revocations were made (answered; see [`LocalIssuer::set_revocation_delay`]).
    pub fn revocations(&self) -> u64 {
        self.state.oauth.revocations.load(Ordering::SeqCst)
    }
}

fn random() -> String {
    {
        let mut bytes = [0u8; 24];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator failed");
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

#[derive(Debug, Deserialize)]
struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    scope: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    #[serde(flatten)]
    extra: HashMap<String, String>,
}

async fn authorize(State(state): State<Arc<IssuerState>>, Query(query): Query<AuthorizeQuery>) -> Response {
    let (Some(client_id), Some(redirect_uri), Some(challenge)) =
        (query.client_id, query.redirect_uri, query.code_challenge)
    else {
        return (StatusCode::BAD_REQUEST, "client_id, redirect_uri and code_challenge are required").into_response();
    };
    if query.response_type.as_deref() != Some("code") || query.code_challenge_method.as_deref() != Some("S256") {
        return (StatusCode::BAD_REQUEST, "only response_type=code with PKCE S256").into_response();
    }
    let Ok(mut target) = url::Url::parse(&redirect_uri) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri is not a URL").into_response();
    };
    let user = state
        .oauth
        .next_user
        .lock()
        .expect("lock")
        .clone()
        .unwrap_or_else(|| StubUser::new("stub-user", "stub@example.com"));
    // The user's session here began a while ago; `prompt=login` or a shorter `max_age` makes
    // them sign in again now (unless told to ignore both).
    let now = chrono::Utc::now().timestamp();
    let reauthenticate = query.extra.get("prompt").is_some_and(|p| p.split(' ').any(|v| v == "login"))
        || query
            .extra
            .get("max_age")
            .and_then(|m| m.parse::<i64>().ok())
            .is_some_and(|m| m < UPSTREAM_SESSION_AGE_SECONDS);
    let auth_time = if reauthenticate && !state.oauth.ignore_reauthentication.load(Ordering::SeqCst) {
        now
    } else {
        now - UPSTREAM_SESSION_AGE_SECONDS
    };
    let code = random();
    let offline =
        state.oauth.refresh_token_needs.lock().expect("lock").iter().all(|(k, v)| query.extra.get(k) == Some(v));
    state.oauth.codes.lock().expect("lock").insert(
        code.clone(),
        PendingCode {
            client_id,
            redirect_uri,
            challenge,
            nonce: query.nonce,
            user,
            scope: query.scope.unwrap_or_default(),
            offline,
            auth_time,
        },
    );
    {
        let mut pairs = target.query_pairs_mut();
        pairs.append_pair("code", &code);
        if let Some(value) = &query.state {
            pairs.append_pair("state", value);
        }
        if state.oauth.sends_iss() {
            pairs.append_pair("iss", &state.issuer);
        }
    }
    Redirect::to(target.as_str()).into_response()
}

#[derive(Debug, Deserialize)]
struct TokenForm {
    grant_type: String,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// The client of a token request: HTTP Basic, else the form.
fn client_of(headers: &HeaderMap, form: &TokenForm) -> (Option<String>, Option<String>) {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.split_once(':').map(|(id, secret)| (id.to_owned(), secret.to_owned())));
    let decode = |v: &str| url::form_urlencoded::parse(format!("v={v}").as_bytes()).next().map(|(_, v)| v.into_owned());
    match basic {
        Some((id, secret)) => (decode(&id), decode(&secret)),
        None => (form.client_id.clone(), form.client_secret.clone()),
    }
}

async fn token(state: State<Arc<IssuerState>>, headers: HeaderMap, form: Form<TokenForm>) -> Response {
    let answer_delay = state.oauth.answer_delay_ms.load(Ordering::SeqCst);
    let response = decide_token(state, headers, form).await;
    if answer_delay > 0 {
        tokio::time::sleep(Duration::from_millis(answer_delay)).await;
    }
    response
}

async fn decide_token(
    State(state): State<Arc<IssuerState>>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Response {
    let delay = state.oauth.token_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if form.grant_type == "refresh_token" {
        state.oauth.refreshes.fetch_add(1, Ordering::SeqCst);
    }
    let fault = {
        let mut faults = state.oauth.faults.lock().expect("lock");
        (!faults.is_empty()).then(|| faults.remove(0))
    };
    match fault {
        Some(TokenFault::InvalidGrant) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
        Some(TokenFault::Error(code)) => return oauth_error(StatusCode::BAD_REQUEST, code),
        Some(TokenFault::ServerError(status)) => {
            return StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY).into_response();
        }
        None => {}
    }
    let (client_id, client_secret) = client_of(&headers, &form);
    if let Some((id, secret)) = state.oauth.client.lock().expect("lock").clone()
        && (client_id.as_deref() != Some(&id) || client_secret.as_deref() != Some(&secret))
    {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    match form.grant_type.as_str() {
        "authorization_code" => {
            let pending = form.code.as_ref().and_then(|code| state.oauth.codes.lock().expect("lock").remove(code));
            let Some(pending) = pending else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let verifier_ok = form.code_verifier.as_deref().is_some_and(|v| {
                URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v.as_bytes()))
                    == pending.challenge
            });
            if !verifier_ok
                || form.redirect_uri.as_deref() != Some(&pending.redirect_uri)
                || client_id.as_deref() != Some(&pending.client_id)
            {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            state.oauth.code_exchanges.fetch_add(1, Ordering::SeqCst);
            let openid = pending.scope.split(' ').any(|s| s == "openid");
            let refresh = if pending.offline { None } else { Some(Some(String::new())) };
            let signed_in = Some((pending.nonce.as_deref(), pending.auth_time));
            issue(&state, &pending.user, &pending.client_id, signed_in, openid, refresh)
        }
        "refresh_token" => {
            let known: Option<(StubUser, String)> = form
                .refresh_token
                .as_ref()
                .and_then(|t| state.oauth.refresh_tokens.lock().expect("lock").get(t).cloned());
            let Some((user, client)) = known else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let rotate = state.oauth.rotate_refresh_tokens.load(Ordering::SeqCst);
            if rotate && let Some(old) = &form.refresh_token {
                state.oauth.refresh_tokens.lock().expect("lock").remove(old);
            }
            let keep = if rotate { None } else { form.refresh_token.clone() };
            issue(&state, &user, &client, None, false, Some(keep))
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

/// Issues tokens. `refresh`: `None` for a code exchange (a new refresh token); `Some(None)` for a
/// rotating refresh (a new one); `Some(Some(_))` for a non-rotating refresh, or a code exchange
/// that may not have one (none in the answer).
fn issue(
    state: &IssuerState,
    user: &StubUser,
    client_id: &str,
    signed_in: Option<(Option<&str>, i64)>,
    openid: bool,
    refresh: Option<Option<String>>,
) -> Response {
    let access_token = random();
    state.oauth.access_tokens.lock().expect("lock").insert(access_token.clone(), user.clone());
    let ttl = match state.oauth.access_token_ttl.load(Ordering::SeqCst) {
        0 => 3600,
        ttl => ttl,
    };
    let mut body = json!({ "access_token": access_token, "token_type": "Bearer", "expires_in": ttl });
    if let Some(scope) = state.oauth.granted_scope.lock().expect("lock").clone() {
        body["scope"] = scope.into();
    }
    let code_without_refresh = refresh.is_none() && state.oauth.no_refresh_token_on_code.load(Ordering::SeqCst);
    if !matches!(refresh, Some(Some(_))) && !code_without_refresh {
        let refresh_token = random();
        state
            .oauth
            .refresh_tokens
            .lock()
            .expect("lock")
            .insert(refresh_token.clone(), (user.clone(), client_id.to_owned()));
        body["refresh_token"] = refresh_token.into();
    }
    if openid {
        body["id_token"] = id_token(state, user, client_id, signed_in).into();
    }
    if state.oauth.account_in_token_answers.load(Ordering::SeqCst) {
        body["account"] = json!({ "id": user.subject });
    }
    Json(body).into_response()
}

/// An id_token; `signed_in`: the authorization request's nonce and the `auth_time` (a code
/// exchange).
fn id_token(state: &IssuerState, user: &StubUser, client_id: &str, signed_in: Option<(Option<&str>, i64)>) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "iss": state.issuer, "sub": user.subject, "aud": client_id, "iat": now, "exp": now + 300,
    });
    if let Some((nonce, auth_time)) = signed_in {
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        claims["auth_time"] = if state.oauth.fractional_auth_time.load(Ordering::SeqCst) {
            (auth_time as f64 + 0.5).into()
        } else {
            auth_time.into()
        };
    }
    for (field, value) in [("email", &user.email), ("name", &user.name), ("preferred_username", &user.username)] {
        if let Some(value) = value {
            claims[field] = value.clone().into();
        }
    }
    if user.email.is_some() {
        claims["email_verified"] = user.email_verified.into();
    }
    let tamper = state.oauth.tamper.lock().expect("lock").take();
    match tamper {
        Some(Tamper::WrongNonce) => claims["nonce"] = "not-the-nonce".into(),
        Some(Tamper::AncientAuthTime) => claims["auth_time"] = (-1e12).into(),
        Some(Tamper::WrongAudience) => claims["aud"] = "someone-else".into(),
        Some(Tamper::OtherAuthorizedParty) => claims["azp"] = "someone-else".into(),
        Some(Tamper::ExtraAudience) => {
            claims["aud"] = json!([client_id, "other-api"]);
            claims["azp"] = client_id.into();
        }
        Some(Tamper::WrongIssuer) => claims["iss"] = "https://other-issuer.example.com".into(),
        Some(Tamper::Expired) => claims["exp"] = (now - 3600).into(),
        Some(Tamper::IssuedInTheFuture) => claims["iat"] = (now + 120).into(),
        Some(Tamper::NoIssuedAt) => {
            claims.as_object_mut().expect("an object").remove("iat");
        }
        Some(Tamper::EmailOnlyInUserinfo) => {
            claims.as_object_mut().expect("claims").remove("email");
            claims["email_verified"] = true.into();
        }
        Some(Tamper::ForgedSignature) | None => {}
    }
    let header = json!({ "alg": "RS256", "kid": "rsa-1", "typ": "JWT" });
    if tamper == Some(Tamper::ForgedSignature) {
        super::SigningKey::generate("rsa-1", super::Alg::Rs256).sign_jws(&header, &claims)
    } else {
        let keys = state.keys.read().expect("keys lock");
        keys.iter().find(|k| k.kid == "rsa-1").expect("the rsa-1 key").sign_jws(&header, &claims)
    }
}

async fn userinfo(State(state): State<Arc<IssuerState>>, headers: HeaderMap) -> Response {
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let user = token.and_then(|t| state.oauth.access_tokens.lock().expect("lock").get(t).cloned());
    let user = user.filter(|_| !state.oauth.refuse_userinfo.load(Ordering::SeqCst));
    if let Some(error) = state.oauth.failure_in_a_200.lock().expect("lock").clone() {
        return Json(json!({ "ok": false, "error": error })).into_response();
    }
    match user {
        Some(user) => {
            let mut body = json!({ "sub": user.subject });
            if let Some(email) = &user.email {
                body["email"] = email.clone().into();
                body["email_verified"] = user.email_verified.into();
            }
            Json(body).into_response()
        }
        None if state.oauth.refusals_in_a_200.load(Ordering::SeqCst) => {
            Json(json!({ "ok": false, "error": "token_revoked" })).into_response()
        }
        None => oauth_error(StatusCode::UNAUTHORIZED, "invalid_token"),
    }
}

async fn revoke(State(state): State<Arc<IssuerState>>, Form(form): Form<HashMap<String, String>>) -> Response {
    let delay = state.oauth.revocation_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    state.oauth.revocations.fetch_add(1, Ordering::SeqCst);
    let hint = form.get("token_type_hint").cloned().unwrap_or_default();
    state.oauth.revocation_hints.lock().expect("lock").push(hint);
    if let Some(token) = form.get("token") {
        state.oauth.refresh_tokens.lock().expect("lock").remove(token);
        state.oauth.access_tokens.lock().expect("lock").remove(token);
    }
    StatusCode::OK.into_response()
}
