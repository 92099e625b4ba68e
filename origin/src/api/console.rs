//! The experiment console (origin/console/, described in its README): plain ES modules,
//! embedded in the binary so that `abx-origin serve` needs no other files and no build step.
//!
//! `GET /` answers the page, which loads its modules from `/console/{version}/…`. `version`
//! is a digest of every embedded file, so those URLs change whenever any file does and can
//! be cached forever, while the page itself is revalidated on every load. `GET
//! /api/v1/whoami` tells the console which role its key has, so it shows only the controls
//! that role may use.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ApiPath, json};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ErrorBody};

/// One embedded file, by its path under origin/console/.
struct Asset {
    path: &'static str,
    bytes: &'static [u8],
}

macro_rules! assets {
    ($($path:literal),* $(,)?) => {
        &[$(Asset {
            path: $path,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $path)),
        }),*]
    };
}

/// Every file the browser loads. The unit test below fails when a file under origin/console/
/// is missing here, so a new module cannot be forgotten.
const ASSETS: &[Asset] = assets![
    "index.html",
    "favicon.svg",
    "app.css",
    "js/main.js",
    "js/api.js",
    "js/dom.js",
    "js/format.js",
    "js/charts.js",
    "js/dialog.js",
    "js/fields.js",
    "js/pages/signin.js",
    "js/pages/experiments.js",
    "js/pages/experiment.js",
    "js/pages/results.js",
    "js/pages/form.js",
    "js/pages/layers.js",
    "js/pages/holdouts.js",
    "js/pages/flags.js",
    "js/pages/metrics.js",
    "js/pages/power.js",
    "js/pages/audit.js",
    "vendor/uPlot.esm.js",
    "vendor/uPlot.min.css",
    "vendor/uPlot.LICENSE",
];

/// Where index.html names the versioned asset directory.
const BASE_PLACEHOLDER: &str = "%ASSET_BASE%";

/// Immutable, versioned URLs: a year, never revalidated.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// The page itself, and assets asked for under another version (a page from an older or
/// newer origin behind the same name): always revalidated, so nothing stale sticks.
const REVALIDATE: &str = "no-cache";

/// The page talks only to this origin; data is put into the DOM as text, never as markup,
/// and this policy is the second line of defence for the API key in session storage.
/// Inline styles are allowed because uPlot positions its elements with them.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Prepared {
    content_type: &'static str,
    bytes: Vec<u8>,
    /// Present when compressing saves at least a tenth.
    gzip: Option<Vec<u8>>,
    etag: HeaderValue,
}

struct Bundle {
    version: String,
    index: Prepared,
    files: HashMap<&'static str, Prepared>,
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map_or("", |(_, ext)| ext) {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "json" => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

fn prepare(path: &'static str, bytes: Vec<u8>) -> Prepared {
    let digest = Sha256::digest(&bytes);
    let etag = format!("\"{}\"", crate::auth::hex(&digest[..12]));
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let gzip = encoder
        .write_all(&bytes)
        .and_then(|()| encoder.finish())
        .ok()
        .filter(|z| z.len() * 10 < bytes.len() * 9);
    Prepared {
        content_type: content_type(path),
        bytes,
        gzip,
        etag: HeaderValue::from_str(&etag).expect("hex is a valid header value"),
    }
}

/// Built on first use: a digest and a gzip copy of each file, a few milliseconds once.
static BUNDLE: LazyLock<Bundle> = LazyLock::new(|| {
    let mut hasher = Sha256::new();
    for asset in ASSETS {
        hasher.update(asset.path.as_bytes());
        hasher.update((asset.bytes.len() as u64).to_le_bytes());
        hasher.update(asset.bytes);
    }
    let version = crate::auth::hex(&hasher.finalize()[..6]);
    let files = ASSETS
        .iter()
        .filter(|a| a.path != "index.html")
        .map(|a| (a.path, prepare(a.path, a.bytes.to_vec())))
        .collect();
    let page = ASSETS
        .iter()
        .find(|a| a.path == "index.html")
        .map_or(&b""[..], |a| a.bytes);
    let page =
        String::from_utf8_lossy(page).replace(BASE_PLACEHOLDER, &format!("/console/{version}"));
    Bundle {
        index: prepare("index.html", page.into_bytes()),
        version,
        files,
    }
});

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| p.trim().replace(' ', "") == "q=0");
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        })
}

fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag.to_str().unwrap_or("")
        })
}

fn respond(file: &Prepared, cache: &'static str, request: &HeaderMap) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::ETAG, file.etag.clone());
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if not_modified(request, &file.etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(file.content_type),
    );
    let body = match &file.gzip {
        Some(gzip) if accepts_gzip(request) => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            gzip.clone()
        }
        _ => file.bytes.clone(),
    };
    (StatusCode::OK, headers, body).into_response()
}

/// `GET /`: the console's page.
pub async fn index(request: HeaderMap) -> Response {
    let mut response = respond(&BUNDLE.index, REVALIDATE, &request);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// `GET /console/{version}/{*path}`: a module, stylesheet or image of the console.
pub async fn asset(
    ApiPath((version, path)): ApiPath<(String, String)>,
    request: HeaderMap,
) -> Result<Response, ApiError> {
    let bundle = &*BUNDLE;
    let file = bundle
        .files
        .get(path.as_str())
        .ok_or_else(|| ApiError::not_found(format!("console file `{path}`")))?;
    let cache = if version == bundle.version {
        IMMUTABLE
    } else {
        REVALIDATE
    };
    Ok(respond(file, cache, &request))
}

/// The caller's key, as the console needs it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct WhoAmI {
    pub key_id: String,
    pub role: Role,
}

/// Which key and role made the request. Any valid key may ask; the console uses it to show
/// only the controls the role may use (the API enforces the roles regardless).
#[utoipa::path(get, path = "/api/v1/whoami", tag = "system",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
pub async fn whoami(caller: Caller) -> Response {
    json(
        StatusCode::OK,
        &WhoAmI {
            key_id: caller.key_id,
            role: caller.role,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files under origin/console/ that the browser never loads.
    fn served(path: &str) -> bool {
        !(path.starts_with("test/")
            || path.starts_with("node_modules/")
            || matches!(path, "package.json" | "package-lock.json" | "README.md"))
    }

    fn files_under(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("console directory") {
            let entry = entry.expect("directory entry");
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().expect("file type").is_dir() {
                files_under(&entry.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }

    #[test]
    fn every_console_file_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut on_disk = Vec::new();
        files_under(&root, "", &mut on_disk);
        let mut on_disk: Vec<String> = on_disk.into_iter().filter(|p| served(p)).collect();
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_string()).collect();
        embedded.sort();
        assert_eq!(
            embedded, on_disk,
            "ASSETS must list exactly the console's files"
        );
    }

    #[test]
    fn the_page_names_the_versioned_assets() {
        let page = String::from_utf8(BUNDLE.index.bytes.clone()).expect("UTF-8");
        assert!(!page.contains(BASE_PLACEHOLDER));
        assert!(page.contains(&format!("/console/{}/js/main.js", BUNDLE.version)));
        assert_eq!(BUNDLE.files.len(), ASSETS.len() - 1);
    }

    #[test]
    fn gzip_negotiation() {
        let with = |value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
            accepts_gzip(&h)
        };
        assert!(with("gzip, deflate, br"));
        assert!(with("br;q=1.0, gzip;q=0.8"));
        assert!(with("*"));
        assert!(!with("gzip;q=0"));
        assert!(!with("br, deflate"));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
