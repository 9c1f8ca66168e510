//! Minimal HTML pages for the browser-facing steps (connect links and provider callbacks): a
//! browser (`Accept: text/html`) gets a readable page, an API client the problem+json body.
//! Pages carry `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::problem::ApiError;

/// Whether the client asked for HTML (a browser navigation).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"))
}

/// An HTML page with a title and a message.
pub fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
         <title>{title}</title></head>\n<body><h1>{title}</h1>\n<p>{message}</p></body></html>\n",
        title = escape(title),
        message = escape(message)
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    protect(headers);
    response
}

/// A page with a title, a message and a list of links (label, local URL).
pub fn links_page(status: StatusCode, title: &str, message: &str, links: &[(String, String)]) -> Response {
    let items: String = links
        .iter()
        .map(|(label, href)| format!("<li><a href=\"{}\">{}</a></li>", escape(href), escape(label)))
        .collect();
    html(
        status,
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
             <title>{title}</title></head>\n<body><h1>{title}</h1>\n<p>{message}</p>\n<ul>{items}</ul></body></html>\n",
            title = escape(title),
            message = escape(message),
        ),
    )
}

/// The consent page: which app asks for which scopes, and a form that posts the decision.
pub fn consent_page(client_name: &str, scopes: &[String], request_id: &str) -> Response {
    let items: String = scopes.iter().map(|s| format!("<li>{}</li>", escape(s))).collect();
    let mut response = html(
        StatusCode::OK,
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
             <title>Allow {name}?</title></head>\n<body><h1>Allow {name} to use your account?</h1>\n\
             <p>{name} asks for:</p>\n<ul>{items}</ul>\n\
             <form method=\"post\" action=\"/oauth/consent\">\
             <input type=\"hidden\" name=\"request_id\" value=\"{id}\">\
             <button type=\"submit\" name=\"decision\" value=\"approve\">Allow</button> \
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form></body></html>\n",
            name = escape(client_name),
            id = escape(request_id),
        ),
    );
    // The consent form must not be framed (clickjacking).
    response.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'"));
    response
}

/// A page asking to confirm an action: a form posting `fields` (hidden) to `action`.
pub fn confirm_page(title: &str, message: &str, action: &str, fields: &[(&str, &str)], button: &str) -> Response {
    let inputs: String = fields
        .iter()
        .map(|(name, value)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(name), escape(value)))
        .collect();
    let mut response = html(
        StatusCode::OK,
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"referrer\" content=\"no-referrer\">\
             <title>{title}</title></head>\n<body><h1>{title}</h1>\n<p>{message}</p>\n\
             <form method=\"post\" action=\"{action}\">{inputs}<button type=\"submit\">{button}</button></form></body></html>\n",
            title = escape(title),
            message = escape(message),
            action = escape(action),
            button = escape(button),
        ),
    );
    response.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    protect(headers);
    response
}

/// An error as a page for browsers, as problem+json otherwise.
pub fn error(headers: &HeaderMap, error: ApiError) -> Response {
    if wants_html(headers) {
        let (status, title, detail) = error.describe();
        return page(status, title, &detail);
    }
    let mut response = error.into_response();
    protect(response.headers_mut());
    response
}

/// Adds `Cache-Control: no-store` and `Referrer-Policy: no-referrer`.
pub fn protect(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            other => other.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_their_text() {
        assert_eq!(escape("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
