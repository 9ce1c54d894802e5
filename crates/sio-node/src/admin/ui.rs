//! The admin UI's static files at `/admin/`, from `--admin-ui-dir` (`ui/dist` of the npm
//! package `@socket.io/admin-ui`), pointed at the cluster that serves them.
//!
//! The UI keeps its server address in localStorage (`server_url`, `namespace`); the served
//! `index.html` loads `sio-admin-config.js` first, which fills them with this page's origin
//! and `--admin-namespace` when they are empty, so the log-in form opens pre-filled. The
//! page's fonts (Roboto, Material Design Icons) come from a CDN in the package; when the npm
//! packages `@fontsource/roboto` and `@mdi/font` sit next to `@socket.io/admin-ui` in the same
//! `node_modules` (as `deploy/admin-ui` installs them), they are served from `/admin/vendor/`
//! instead, so the UI works without internet access.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// Where the UI is served.
pub const UI_PATH: &str = "/admin/";

const GOOGLE_FONTS: &str = "https://fonts.googleapis.com/css?family=Roboto:100,300,400,500,700,900";
const MDI_CDN: &str =
    "https://cdn.jsdelivr.net/npm/@mdi/font@latest/css/materialdesignicons.min.css";
const ROBOTO_WEIGHTS: [&str; 4] = ["300", "400", "500", "700"];

struct Ui {
    dist: PathBuf,
    mdi: Option<PathBuf>,
    roboto: Option<PathBuf>,
    index: String,
    config_js: String,
}

/// The `node_modules` folder holding `@socket.io/admin-ui` when `dist` is its `ui/dist`.
fn node_modules(dist: &Path) -> Option<PathBuf> {
    let pkg = dist.parent()?.parent()?; // …/@socket.io/admin-ui
    let scope = pkg.parent()?; // …/@socket.io
    let modules = scope.parent()?;
    (scope.file_name()? == "@socket.io").then(|| modules.to_path_buf())
}

fn vendor(dist: &Path, package: &str, probe: &str) -> Option<PathBuf> {
    let dir = node_modules(dist)?.join(package);
    dir.join(probe).is_file().then_some(dir)
}

/// `index.html` with the fonts made local (when available) and the config script first.
fn inject(index: &str, mdi: bool, roboto: bool) -> String {
    let mut html = index.to_owned();
    if mdi {
        html = html.replace(MDI_CDN, "vendor/mdi/css/materialdesignicons.min.css");
    }
    if roboto {
        html = html.replace(GOOGLE_FONTS, "vendor/roboto.css");
    }
    let script = r#"<script src="sio-admin-config.js"></script>"#;
    match html.find("<head>") {
        Some(i) => html.insert_str(i + "<head>".len(), script),
        None => html.insert_str(0, script),
    }
    html
}

fn config_js(namespace: &str) -> String {
    let ns = serde_json::to_string(namespace).unwrap_or_else(|_| "\"/admin\"".into());
    format!(
        "// Written by sio-node: points the admin UI at the cluster that serves it.\n\
         (function () {{\n  try {{\n    \
         if (!localStorage.getItem(\"server_url\")) localStorage.setItem(\"server_url\", location.origin);\n    \
         if (!localStorage.getItem(\"namespace\")) localStorage.setItem(\"namespace\", {ns});\n  \
         }} catch (e) {{}}\n}})();\n"
    )
}

fn roboto_css() -> String {
    ROBOTO_WEIGHTS
        .iter()
        .map(|w| format!("@import url(\"roboto/{w}.css\");\n"))
        .collect()
}

fn secured(mut res: Response, cache: &'static str) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

fn text(content_type: &'static str, body: String) -> Response {
    secured(
        ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        "no-cache",
    )
}

async fn serve_from(dir: &Path, rest: &str, req: Request) -> Response {
    let Ok(uri) = format!("/{rest}").parse::<Uri>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut sub = Request::new(Body::empty());
    *sub.uri_mut() = uri;
    *sub.method_mut() = req.method().clone();
    *sub.headers_mut() = req.headers().clone();
    match ServeDir::new(dir).oneshot(sub).await {
        Ok(res) => secured(res.map(Body::new), "public, max-age=3600"),
        Err(e) => match e {},
    }
}

async fn file(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let rest = path.strip_prefix(UI_PATH).unwrap_or("");
    match rest {
        "" | "index.html" => text("text/html; charset=utf-8", ui.index.clone()),
        "sio-admin-config.js" => text("text/javascript; charset=utf-8", ui.config_js.clone()),
        "vendor/roboto.css" if ui.roboto.is_some() => text("text/css; charset=utf-8", roboto_css()),
        _ => {
            if let Some(r) = rest.strip_prefix("vendor/mdi/")
                && let Some(dir) = &ui.mdi
            {
                return serve_from(dir, r, req).await;
            }
            if let Some(r) = rest.strip_prefix("vendor/roboto/")
                && let Some(dir) = &ui.roboto
            {
                return serve_from(dir, r, req).await;
            }
            serve_from(&ui.dist, rest, req).await
        }
    }
}

/// Routes serving the UI from `dist` at `/admin/`, pointed at `namespace`.
pub fn routes(dist: &Path, namespace: &str) -> std::io::Result<Router> {
    let index = std::fs::read_to_string(dist.join("index.html"))?;
    let mdi = vendor(dist, "@mdi/font", "css/materialdesignicons.min.css");
    let roboto = vendor(dist, "@fontsource/roboto", "400.css");
    if mdi.is_none() || roboto.is_none() {
        tracing::info!(
            "admin UI: @mdi/font or @fontsource/roboto not found next to {}; the page loads its fonts from the internet",
            dist.display()
        );
    }
    let ui = Arc::new(Ui {
        index: inject(&index, mdi.is_some(), roboto.is_some()),
        config_js: config_js(namespace),
        dist: dist.to_path_buf(),
        mdi,
        roboto,
    });
    Ok(Router::new()
        .route("/admin", get(|| async { Redirect::permanent(UI_PATH) }))
        .route(UI_PATH, get(file))
        .route("/admin/{*rest}", get(file))
        .with_state(ui))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_gets_the_config_script_first_and_local_fonts() {
        let index = format!(
            r#"<html><head><link rel="stylesheet" href="{GOOGLE_FONTS}"><link rel="stylesheet" href="{MDI_CDN}"></head><body><script src="js/app.js"></script></body></html>"#
        );
        let html = inject(&index, true, true);
        assert!(html.starts_with(r#"<html><head><script src="sio-admin-config.js"></script>"#));
        assert!(!html.contains("https://"));
        assert!(html.contains("vendor/mdi/css/materialdesignicons.min.css"));
        let kept = inject(&index, false, false);
        assert!(kept.contains(GOOGLE_FONTS) && kept.contains(MDI_CDN));
        assert!(config_js("/ops").contains(r#"setItem("namespace", "/ops")"#));
    }

    #[test]
    fn vendor_packages_are_found_beside_the_ui() {
        let nm = Path::new("/x/node_modules");
        let dist = nm.join("@socket.io/admin-ui/ui/dist");
        assert_eq!(node_modules(&dist).as_deref(), Some(nm));
        assert_eq!(node_modules(Path::new("/srv/ui/dist")), None);
    }
}
