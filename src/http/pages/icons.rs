//! Provider icons on the pages: a provider's configured `icon_url`, else one of the small SVGs
//! Tessera serves itself (`/assets/icons/{name}.svg`, no CDN) for well-known providers, else a
//! monogram (the first letter of its name, drawn by the stylesheet).

use std::collections::HashMap;

use crate::http::extract::ApiPath;
use crate::http::problem::ApiError;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::config::{ProviderConfig, ProviderKind};

/// Where the built-in icons are served.
pub const ICONS_PATH: &str = "/assets/icons";

/// The built-in icons: name and SVG (hand-drawn, each well under 1 KiB).
const BUILT_IN: &[(&str, &str)] = &[
    ("github", include_str!("../../../assets/icons/github.svg")),
    ("gitlab", include_str!("../../../assets/icons/gitlab.svg")),
    ("google", include_str!("../../../assets/icons/google.svg")),
    ("microsoft", include_str!("../../../assets/icons/microsoft.svg")),
    ("slack", include_str!("../../../assets/icons/slack.svg")),
];

/// How a provider is shown beside its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icon {
    /// The image's URL; `None`: the monogram.
    pub src: Option<String>,
    /// The monogram: the first letter of the provider's name, upper case.
    pub initial: String,
}

impl Icon {
    /// The monogram of a name as people read it.
    pub fn monogram(label: &str) -> Self {
        Self { src: None, initial: label.chars().next().map(|c| c.to_uppercase().to_string()).unwrap_or_default() }
    }
}

/// The built-in icon that fits a provider: by its name, else its catalogue template, else its
/// kind, else its issuer's host.
pub fn built_in(provider: &ProviderConfig) -> Option<&'static str> {
    let known = |name: &str| BUILT_IN.iter().find(|(n, _)| *n == name).map(|(n, _)| *n);
    if let Some(name) = known(&provider.name).or_else(|| provider.protocol.template.as_deref().and_then(known)) {
        return Some(name);
    }
    match provider.kind {
        ProviderKind::GitHub => return known("github"),
        ProviderKind::GitLab => return known("gitlab"),
        ProviderKind::Oidc | ProviderKind::OAuth2 => {}
    }
    let host = url::Url::parse(provider.issuer.as_str()).ok()?.host_str()?.to_owned();
    let by_host = [
        ("github.com", "github"),
        ("gitlab.com", "gitlab"),
        ("accounts.google.com", "google"),
        ("login.microsoftonline.com", "microsoft"),
        ("slack.com", "slack"),
    ];
    by_host.iter().find(|(h, _)| host == *h || host.ends_with(&format!(".{h}"))).and_then(|(_, n)| known(n))
}

/// The icons of the configured providers, by provider name, and the origins of the remote ones
/// (for the pages' `img-src`).
pub fn of_providers(
    providers: &[ProviderConfig],
    label: impl Fn(&str) -> String,
) -> (HashMap<String, Icon>, Vec<String>) {
    let mut icons = HashMap::new();
    let mut origins = Vec::new();
    for provider in providers {
        let src = match &provider.icon_url {
            Some(url) => {
                if let Some(origin) = crate::config::image_origin(url)
                    && !origins.contains(&origin)
                {
                    origins.push(origin);
                }
                Some(url.clone())
            }
            None => built_in(provider).map(|name| format!("{ICONS_PATH}/{name}.svg")),
        };
        let icon = Icon { src, ..Icon::monogram(&label(&provider.name)) };
        icons.insert(provider.name.clone(), icon);
    }
    (icons, origins)
}

/// `GET /assets/icons/{name}.svg`: a built-in icon, cacheable for a day.
#[utoipa::path(
    get,
    path = "/assets/icons/{file}",
    tag = "pages",
    operation_id = "icon",
    summary = "A built-in provider icon (SVG).",
    params(("file" = String, Path, description = "An icon's file name, e.g. `github.svg`")),
    responses(crate::http::openapi::ApiErrors, (status = 200, description = "The icon.", body = String, content_type = "image/svg+xml")),
    security(()),
)]
pub async fn serve_icon(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<crate::http::AppState>>,
    headers: axum::http::HeaderMap,
    file: Result<ApiPath<String>, ApiError>,
) -> Response {
    // A name that does not decode (`%FF`) is no icon's either: the same 404 — a page for a
    // browser, problem+json otherwise, as for any path that does not exist.
    let svg = file.ok().and_then(|ApiPath(file)| {
        file.strip_suffix(".svg").and_then(|name| BUILT_IN.iter().find(|(n, _)| *n == name)).map(|(_, s)| *s)
    });
    let Some(svg) = svg else {
        return state.pages.error(&headers, super::super::not_found().await);
    };
    let mut response = svg.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Opened on its own, an SVG is a document: it may run nothing and load nothing.
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_icons_are_small_svgs_without_script() {
        for (name, svg) in BUILT_IN {
            assert!(svg.len() < 1024, "{name}");
            assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{name}");
            assert!(!svg.contains("<script") && !svg.contains("href") && !svg.contains("style"), "{name}");
        }
    }

    #[test]
    fn a_monogram_is_the_first_letter() {
        assert_eq!(Icon::monogram("okta corp").initial, "O");
        assert_eq!(Icon::monogram("").initial, "");
    }
}
