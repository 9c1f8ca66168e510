//! The OpenAPI 3.1 document of every route, served at `GET /openapi.json`.
//!
//! It is generated from the handlers' `#[utoipa::path]` attributes and the body types' schemas.
//! Errors share one `Problem` schema whose `code` enum is the table of [`ErrorCode`]s, and one set
//! of error responses ([`ApiErrors`]) with every status that table uses. Pages (HTML) and the
//! OAuth endpoints (form bodies, RFC 6749 errors) are described with their real content types.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, PartialSchema, ToSchema};

use super::AppState;
use super::problem::PROBLEM_JSON;
use crate::error::ErrorCode;

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

/// The route serving the document.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route(PATH, get(openapi_json))
}

static DOCUMENT: LazyLock<String> =
    LazyLock::new(|| ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serialises"));

/// The document itself.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The OpenAPI 3.1 document describing every route.
#[utoipa::path(get, path = "/openapi.json", tag = "meta", operation_id = "openapi",
    summary = "This document.",
    responses(ApiErrors,
        (status = 200, description = "This document (OpenAPI 3.1).", content_type = "application/json", body = Object)),
    security(()))]
async fn openapi_json() -> Response {
    let mut response = DOCUMENT.as_str().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The document: every operation, the shared schemas and the security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera",
        description = "A self-hosted identity broker: sign-in, users and teams, auth profiles (connected accounts), an OpenID Provider and its admin API. Errors of the JSON APIs are `application/problem+json` bodies with a stable `code`; the OAuth endpoints answer RFC 6749 errors; pages are HTML."
    ),
    paths(
        crate::http::health::healthz,
        crate::http::health::readyz,
        crate::http::prometheus::scrape,
        crate::http::admin::bootstrap_user,
        crate::http::admin::bootstrap_existing_user,
        crate::http::admin::get_user,
        crate::http::admin::update_user,
        crate::http::admin::delete_user,
        crate::http::admin_listing::list_users,
        crate::http::admin_listing::list_teams,
        crate::http::admin_listing::create_team,
        crate::http::admin_listing::list_team_members,
        crate::http::admin_teams::get_team,
        crate::http::admin_teams::delete_team,
        crate::http::admin_teams::list_team_domains,
        crate::http::admin_teams::claim_team_domain,
        crate::http::admin_teams::release_team_domain,
        crate::http::members::add_team_member,
        crate::http::members::remove_team_member,
        crate::http::members::change_team_member_role,
        crate::http::members::add_member,
        crate::http::members::remove_member,
        crate::http::members::change_member_role,
        crate::http::webhooks::list,
        crate::http::webhooks::create,
        crate::http::webhooks::show,
        crate::http::webhooks::update,
        crate::http::webhooks::remove,
        crate::http::webhooks::deliveries,
        crate::http::webhooks::replay,
        crate::http::audit::list_audit_events,
        crate::http::webhooks::rotate_secret,
        crate::http::validation::validate_token,
        crate::http::validation::check_team,
        crate::http::validation::discover_sign_in,
        crate::http::me::get_me,
        crate::http::me::unlink_identity,
        crate::http::me::make_identity_primary,
        crate::http::auth_profiles::api::list_auth_profiles,
        crate::http::auth_profiles::api::create_auth_profile,
        crate::http::auth_profiles::api::get_auth_profile,
        crate::http::auth_profiles::api::revoke_auth_profile,
        crate::http::auth_profiles::api::connect_auth_profile,
        crate::http::auth_profiles::api::auth_profile_token,
        crate::http::auth_profiles::actions::update_auth_profile,
        crate::http::auth_profiles::actions::set_default_auth_profile,
        crate::http::auth_profiles::actions::clear_default_auth_profile,
        crate::http::auth_profiles::actions::test_auth_profile,
        crate::http::auth_profiles::actions::connector_credentials,
        crate::http::auth_profiles::credentials::set_env_values,
        crate::http::auth_profiles::credentials::set_browser_session,
        crate::http::auth_profiles::credentials::profile_credentials,
        crate::http::auth_profiles::env_form::show_env_form,
        crate::http::auth_profiles::env_form::submit_env_form,
        crate::http::auth_profiles::connect::show_connect,
        crate::http::auth_profiles::connect::start_connect,
        crate::http::auth::list_providers,
        crate::http::auth::start_login,
        crate::http::auth::start_link,
        crate::http::auth::start_link_form,
        crate::http::auth::complete_callback,
        crate::http::auth::confirm_logout,
        crate::http::auth::logout,
        crate::http::auth::keep_session,
        crate::http::login::home,
        crate::http::login::show_login,
        crate::http::login::submit_login,
        crate::http::pages::stylesheet,
        crate::http::pages::icons::serve_icon,
        crate::http::account::show_account,
        crate::http::account::unlink_identity,
        crate::http::account::make_identity_primary,
        crate::http::account::revoke_connection,
        crate::http::account::reconnect_connection,
        crate::http::account::sign_out_others,
        crate::http::account::remove_app,
        crate::http::op::authorize::authorize_get,
        crate::http::op::authorize::authorize_post,
        crate::http::op::authorize::consent,
        crate::http::op::authorize::logout_get,
        crate::http::op::authorize::logout_post,
        crate::http::op::discovery::configuration,
        crate::http::op::discovery::userinfo,
        crate::http::op::jwks::get_jwks,
        crate::http::op::forward_auth::verify,
        crate::http::op::token::token,
        crate::http::op::token::revoke,
        crate::http::op::token::introspect,
        crate::http::op::token::push,
        crate::http::op::token::preflight,
        crate::http::op::clients::list_clients,
        crate::http::op::clients::create_client,
        crate::http::op::clients::get_client,
        crate::http::op::clients::update_client,
        crate::http::op::clients::delete_client,
        crate::http::op::clients::rotate_secret,
        crate::http::mcp::metadata,
        openapi_json,
        mcp_endpoint,
        mcp_resource_metadata_at_path,
        oauth_authorization_server_metadata,
        revoke_preflight,
        par_preflight,
        userinfo_preflight,
        userinfo_post,
    ),
    components(schemas(Problem, OAuthError)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "admin", description = "The admin API (an admin token)."),
        (name = "teams", description = "Team membership, for users (a bearer token) or operators acting for one."),
        (name = "auth-profiles", description = "Auth profiles: a user's connected accounts in a team."),
        (name = "sign-in", description = "Token validation and sign-in discovery."),
        (name = "account", description = "The signed-in user's own record."),
        (name = "pages", description = "Browser pages (HTML) and their forms."),
        (name = "oauth", description = "Tessera's OpenID Provider (RFC 6749 errors)."),
        (name = "mcp", description = "The MCP endpoint."),
        (name = "meta", description = "Health and this document."),
    )
)]
pub struct ApiDoc;

/// A page's form: every form carries its page's CSRF token (other fields depend on the form).
#[derive(ToSchema)]
#[expect(dead_code, reason = "a schema only: forms are parsed by the handlers")]
pub struct CsrfForm {
    /// The CSRF token of the page that showed the form.
    csrf: String,
}

/// The form of `POST /auth/link` (the page `GET /auth/link` shows when it was opened from
/// another site).
#[derive(ToSchema)]
#[expect(dead_code, reason = "a schema only: the form is parsed by the handler")]
pub struct LinkForm {
    /// The CSRF token of the page that showed the form.
    csrf: String,
    /// The provider to link.
    provider: Option<String>,
    /// Where to go once linked.
    return_to: Option<String>,
}

/// The consent page's form, `POST /oauth/consent`.
#[derive(ToSchema)]
#[expect(dead_code, reason = "a schema only: the form is parsed by the handler")]
pub struct ConsentForm {
    /// The consent request the page showed (single-use, bound to the session).
    request_id: String,
    /// `approve`, `deny`, or `another_account` (someone else signs in instead).
    #[schema(pattern = "^(approve|deny|another_account)$")]
    decision: String,
}

/// The form of an account-page action that takes something away (a sign-in method, a
/// connection): without `confirmed`, it answers with a page asking to confirm.
#[derive(ToSchema)]
#[expect(dead_code, reason = "a schema only: the form is parsed by the handler")]
pub struct ConfirmedForm {
    /// The CSRF token of the page that showed the form.
    csrf: String,
    /// `yes` once confirmed (the confirmation page's button sends it).
    confirmed: Option<String>,
}

/// The form of `POST /account/apps/remove`: without `confirmed`, it answers with a page asking
/// to confirm.
#[derive(ToSchema)]
#[expect(dead_code, reason = "a schema only: the form is parsed by the handler")]
pub struct RemoveAppForm {
    /// The CSRF token of the page that showed the form.
    csrf: String,
    /// The app's client id.
    client: String,
    /// `yes` once confirmed (the confirmation page's button sends it).
    confirmed: Option<String>,
}

/// The form parameters of an OAuth or OpenID Connect request (RFC 6749 and the specifications
/// each endpoint names), such as `grant_type`, `code`, `client_id`, `token`.
#[derive(ToSchema)]
#[expect(dead_code, reason = "a schema only: forms are parsed by the handlers")]
pub struct OAuthForm {
    /// The client, when it does not authenticate with HTTP Basic.
    client_id: Option<String>,
}

// Routes served by a handler documented under another path or method: the handler's attribute
// names one path, these name the others.

/// The MCP endpoint (Streamable HTTP, JSON-RPC over POST; `GET` and `DELETE` are refused in
/// stateless mode).
#[utoipa::path(post, path = "/mcp", tag = "mcp", operation_id = "mcp",
    summary = "The MCP endpoint: JSON-RPC requests, answered in JSON.",
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "The JSON-RPC answer.", body = Object, content_type = "application/json"),
        (status = 202, description = "Accepted (a notification)."), ApiErrors),
    security(("bearer" = [])))]
#[expect(dead_code, reason = "documents a route served by the MCP service")]
fn mcp_endpoint() {}

/// `GET /.well-known/oauth-protected-resource/mcp`, the same document as without the path.
#[utoipa::path(get, path = "/.well-known/oauth-protected-resource/mcp", tag = "mcp",
    operation_id = "mcp_resource_metadata_at_path",
    summary = "The MCP endpoint's protected-resource metadata, at the resource's path (RFC 9728).",
    responses((status = 200, description = "The metadata.", body = Object, content_type = "application/json"), ApiErrors),
    security(()))]
#[expect(dead_code, reason = "documents a route served by `mcp::metadata`")]
fn mcp_resource_metadata_at_path() {}

/// `GET /.well-known/oauth-authorization-server`, the same document as the OpenID configuration.
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "oauth",
    operation_id = "oauth_authorization_server_metadata",
    summary = "The authorization server's metadata (RFC 8414), as `/.well-known/openid-configuration`.",
    responses((status = 200, description = "The metadata.", body = Object, content_type = "application/json"), OAuthErrors),
    security(()))]
#[expect(dead_code, reason = "documents a route served by `op::discovery::configuration`")]
fn oauth_authorization_server_metadata() {}

/// CORS preflight of `/oauth/revoke`.
#[utoipa::path(options, path = "/oauth/revoke", tag = "oauth", operation_id = "revoke_preflight",
    summary = "CORS preflight.",
    responses(ApiErrors, (status = 200, description = "A CORS preflight, answered by the CORS layer."),
        (status = 204, description = "Not a CORS preflight.")),
    security(()))]
#[expect(dead_code, reason = "documents a route served by `op::token::preflight`")]
fn revoke_preflight() {}

/// CORS preflight of `/oauth/par`.
#[utoipa::path(options, path = "/oauth/par", tag = "oauth", operation_id = "par_preflight",
    summary = "CORS preflight.",
    responses(ApiErrors, (status = 200, description = "A CORS preflight, answered by the CORS layer."),
        (status = 204, description = "Not a CORS preflight.")),
    security(()))]
#[expect(dead_code, reason = "documents a route served by `op::token::preflight`")]
fn par_preflight() {}

/// `POST /oauth/userinfo`: the UserInfo endpoint as `GET` serves it, under an operation id of its
/// own (ids are unique in a document).
#[utoipa::path(post, path = "/oauth/userinfo", tag = "oauth", operation_id = "userinfo_post",
    summary = "The UserInfo endpoint (as `GET`).", responses(UserinfoResponses), security(("bearer" = [])))]
#[expect(dead_code, reason = "documents a route served by `op::discovery::userinfo`")]
fn userinfo_post() {}

/// CORS preflight of `/oauth/userinfo`.
#[utoipa::path(options, path = "/oauth/userinfo", tag = "oauth", operation_id = "userinfo_preflight",
    summary = "CORS preflight.",
    responses(ApiErrors, (status = 200, description = "A CORS preflight, answered by the CORS layer."),
        (status = 204, description = "Not a CORS preflight.")),
    security(()))]
#[expect(dead_code, reason = "documents a route served by `op::token::preflight`")]
fn userinfo_preflight() {}

/// An RFC 9457 problem: the body of every error of Tessera's own APIs (`application/problem+json`).
/// Other members (such as `field`, naming the request field at fault) may follow.
pub struct Problem;

impl PartialSchema for Problem {
    fn schema() -> RefOr<Schema> {
        let string = |description: &str| ObjectBuilder::new().schema_type(Type::String).description(Some(description));
        ObjectBuilder::new()
            .description(Some("An RFC 9457 problem; `code` is the stable, machine-readable error code."))
            .property("type", string("`urn:tessera:problem:{code}`"))
            .property("title", string("The code's short title."))
            .property("status", ObjectBuilder::new().schema_type(Type::Integer).description(Some("The HTTP status.")))
            .property("detail", string("What went wrong and how to fix it."))
            .property(
                "code",
                string("The stable error code (README, \"Error codes\").")
                    .enum_values(Some(ErrorCode::ALL.iter().map(|code| code.as_str()))),
            )
            .required("type")
            .required("title")
            .required("status")
            .required("detail")
            .required("code")
            .into()
    }
}

impl ToSchema for Problem {
    fn name() -> std::borrow::Cow<'static, str> {
        "Problem".into()
    }
}

/// An OAuth 2.0 error (RFC 6749 section 5.2), the body of the OpenID Provider's JSON errors.
#[derive(ToSchema)]
#[expect(dead_code, reason = "a schema only: the body is written by `op::token::OAuthResponse`")]
pub struct OAuthError {
    /// The RFC 6749 error code, such as `invalid_request`, `invalid_client` or `invalid_grant`.
    error: String,
    /// What went wrong.
    error_description: Option<String>,
}

/// The statuses of the error table, each with the codes that use it.
fn statuses() -> BTreeMap<u16, Vec<&'static str>> {
    let mut statuses: BTreeMap<u16, Vec<&'static str>> = BTreeMap::new();
    for code in ErrorCode::ALL {
        statuses.entry(code.status().as_u16()).or_default().push(code.as_str());
    }
    // Every refused bearer token is a 401, whichever code says why (`ApiError::with_status`).
    statuses.entry(401).or_default();
    statuses
}

fn problem_description(codes: &[&str]) -> String {
    if codes.is_empty() {
        "A problem (see `code`).".to_owned()
    } else {
        format!("A problem; `code` is one of: {}.", codes.join(", "))
    }
}

/// What the APIs' 401 adds to the codes of that status: a refused bearer token keeps the code
/// that says why, whatever that code's own status.
const REFUSED_TOKEN: &str = " A refused bearer token is a 401 too, whichever code says why (`malformed_token`, \
    `signature_invalid`, `token_expired`, `issuer_not_allowed`, …; README, \"Token validation \
    (for other backends)\"), with `WWW-Authenticate: Bearer error=\"invalid_token\"`.";

fn problem_content() -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(Ref::from_schema_name(Problem::name()))).build()
}

fn oauth_error_content() -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(Ref::from_schema_name(OAuthError::name()))).build()
}

fn problem_responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    statuses()
        .into_iter()
        .map(|(status, codes)| {
            let mut description = problem_description(&codes);
            if status == 401 {
                description.push_str(REFUSED_TOKEN);
            }
            let response = ResponseBuilder::new().description(description).content(PROBLEM_JSON, problem_content());
            (status.to_string(), response.build().into())
        })
        .collect()
}

fn html_content() -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::String))).build()
}

/// The error responses of the JSON APIs: a [`Problem`] for every status of the error table.
pub struct ApiErrors;

impl IntoResponses for ApiErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        problem_responses()
    }
}

/// The responses of browser pages: the page, or a redirect (`Location`), or an error page.
pub struct PageResponses;

impl IntoResponses for PageResponses {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        page_responses(false)
    }
}

/// The responses of the OpenID Provider's pages (authorization, consent, logout): those of
/// [`PageResponses`], and an [`OAuthError`] in JSON for a client that is not a browser.
pub struct OAuthPageResponses;

impl IntoResponses for OAuthPageResponses {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        page_responses(true)
    }
}

fn page_responses(oauth_json: bool) -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
    let mut responses = BTreeMap::new();
    for (status, codes) in statuses() {
        let mut response = ResponseBuilder::new()
            .description(problem_description(&codes))
            .content("text/html; charset=utf-8", html_content())
            .content(PROBLEM_JSON, problem_content());
        if oauth_json {
            response = response.content("application/json", oauth_error_content());
        }
        responses.insert(status.to_string(), response.build().into());
    }
    let html = |description: &str| {
        ResponseBuilder::new().description(description).content("text/html; charset=utf-8", html_content()).build()
    };
    responses.insert("200".into(), html("The page.").into());
    for status in ["302", "303"] {
        responses.insert(status.into(), ResponseBuilder::new().description("A redirect (`Location`).").build().into());
    }
    responses
}

/// The responses of the OpenID Provider's protocol endpoints when they fail: an [`OAuthError`]
/// (`400`, `401` for client authentication, `404` or `503` while the provider is off or the store
/// is down, `405` for a method the endpoint does not take, `413` for a form over the body limit,
/// `500`) or, from the shared layers (a request the HTTP layer refuses, say), a [`Problem`].
pub struct OAuthErrors;

impl IntoResponses for OAuthErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let mut responses = problem_responses();
        for status in ["400", "401", "404", "405", "413", "500", "503"] {
            let response = ResponseBuilder::new()
                .description("An OAuth 2.0 error (RFC 6749 section 5.2).")
                .content("application/json", oauth_error_content())
                .content(PROBLEM_JSON, problem_content())
                .build();
            responses.insert(status.into(), response.into());
        }
        responses
    }
}

/// The answers of `/oauth/userinfo` (RFC 6750 errors, with `WWW-Authenticate: Bearer`).
pub struct UserinfoResponses;

impl IntoResponses for UserinfoResponses {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let mut responses = OAuthErrors::responses();
        let json = ContentBuilder::new().schema(Some(ObjectBuilder::new().schema_type(Type::Object).build())).build();
        let answers = [
            ("200", "The claims.", json),
            ("403", "An active token not issued for `openid` (`insufficient_scope`).", oauth_error_content()),
        ];
        for (status, description, content) in answers {
            let response = ResponseBuilder::new().description(description).content("application/json", content);
            responses.insert(status.into(), response.build().into());
        }
        // No body without a token (RFC 6750 3.1), an `OAuthError` for one that is not active: a
        // status of a document has one set of media types, so the body is described in words.
        let refused = "No valid access token (`WWW-Authenticate: Bearer`): no body without a token; for a token \
                       that is not active, an `OAuthError` body (`invalid_token`, `application/json`).";
        responses.insert("401".into(), ResponseBuilder::new().description(refused).build().into());
        responses
    }
}

/// The user a team route called with the admin token acts for: the `on_behalf_of` query
/// parameter or the `X-On-Behalf-Of` header (both at once must agree).
pub struct OnBehalfParams;

impl IntoParams for OnBehalfParams {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        let user_id = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Uuid)))
        };
        [(ParameterIn::Query, "on_behalf_of"), (ParameterIn::Header, "X-On-Behalf-Of")]
            .into_iter()
            .map(|(place, name)| {
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(place)
                    .required(utoipa::openapi::Required::False)
                    .description(Some("With the admin token: the user the call acts for (a user id)."))
                    .schema(Some(user_id()))
                    .build()
            })
            .collect()
    }
}

/// Adds the security schemes.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(description.to_owned());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "admin_token",
            bearer("An admin token (`auth.admin_tokens`); `X-Admin-Token: <token>` works too."),
        );
        components.add_security_scheme(
            "admin_token_header",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Admin-Token",
                "An admin token (`auth.admin_tokens`).",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            bearer(
                "An upstream provider's token, or an access token of Tessera's OpenID Provider; `X-User-Token: <token>` works too.",
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "__Host-tessera_session",
                "The browser session cookie set by the sign-in (its name is configurable).",
            ))),
        );
        let mut basic = Http::new(HttpAuthScheme::Basic);
        basic.description = Some("OAuth client authentication (`client_secret_basic`).".to_owned());
        components.add_security_scheme("client_basic", SecurityScheme::Http(basic));
    }
}
