//! `GET /`: a small page to try the server from a browser.

use axum::response::Html;

/// The page, built into the binary.
pub(crate) async fn index() -> Html<&'static str> {
    Html(include_str!("web/index.html"))
}
