//! The admin API as JSON over HTTP, for curl and test scripts.
//!
//! ```text
//! GET    /v1/status                       PUT    /v1/handlers/{service}/{method}
//! GET    /v1/services                     DELETE /v1/handlers/{service}/{method}
//! POST   /v1/reload                       POST   /v1/reset
//! GET    /v1/journal[?filters]            GET    /v1/journal/{id}
//! DELETE /v1/journal                      POST   /v1/verify
//! ```
//! Bodies are read with a size limit and parsed here, so every bad request gets a JSON answer
//! that says what is wrong (curl sends `-d` bodies as form data: the content-type is not
//! checked). Errors come from [`AdminError`], like the gRPC front end's.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http::{header, HeaderValue, Method, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::Value as Json;

use super::{Admin, Op};
use crate::config;
use crate::control::Problem;
use crate::error::{AdminError, Location, StartupError};

/// The largest request body accepted: a handler entry or a verify is far smaller.
pub const MAX_BODY: usize = 1024 * 1024;
/// The longest a client may take to send a body.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What a `PUT /v1/handlers/…` body is.
const ENTRY: &str = "the method's entry, as in a handler file: {\"reply\": {…}}";

const ROUTES: &str = "GET /v1/status, GET /v1/services, POST /v1/reload, PUT|DELETE /v1/handlers/{service}/{method}, POST /v1/reset, GET|DELETE /v1/journal, GET /v1/journal/{id}, POST /v1/verify";

/// The routes, over `admin`.
pub fn router(admin: Arc<Admin>) -> axum::Router {
    axum::Router::new()
        .route("/v1/status", get(status))
        .route("/v1/services", get(services))
        .route("/v1/reload", post(reload))
        .route(
            "/v1/handlers/{service}/{method}",
            put(put_handler).delete(remove_handler),
        )
        .route("/v1/reset", post(reset))
        .route("/v1/journal", get(list_calls).delete(clear_journal))
        .route("/v1/journal/{id}", get(get_call))
        .route("/v1/verify", post(verify))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(admin)
}

/// A JSON answer, pretty-printed for people reading curl's output.
pub fn json_response(status: StatusCode, body: &Json) -> Response {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_else(|_| b"{}".to_vec());
    text.push(b'\n');
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The answer for a refused request.
pub fn error_response(e: &AdminError) -> Response {
    let mut resp = json_response(e.http_status(), &e.json());
    if matches!(e, AdminError::Unauthenticated) {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"protoserve admin\""),
        );
    }
    resp
}

/// The answer for `result`, written (and the value freed) on a blocking thread: a journal
/// page can be tens of megabytes of JSON, and writing it on a thread that drives the network
/// held up every gRPC call that thread served meanwhile.
async fn answer(result: Result<Json, AdminError>) -> Response {
    let render = move || match result {
        Ok(json) => json_response(StatusCode::OK, &json),
        Err(e) => error_response(&e),
    };
    tokio::task::spawn_blocking(render)
        .await
        .unwrap_or_else(|e| {
            error_response(&AdminError::Internal(format!(
                "writing the answer failed: {e}"
            )))
        })
}

/// Reads and parses a JSON body, refusing what is too large (declared or sent), too slow,
/// empty, or not JSON. A leading byte-order mark is dropped, as from a file. A problem is
/// placed as in a file, its column counted in characters (`serde_json` counts bytes, so a
/// mistake after `é日本` was said to be five columns to the right of a repeated key's count).
async fn read_json(body: Body, what: &str) -> Result<Json, AdminError> {
    let bytes = read_body(body, what).await?;
    let bytes = crate::input::without_bom(&bytes);
    let json = serde_json::from_slice(bytes).map_err(|e| {
        let (line, col) = crate::input::json_error_at(bytes, &e);
        let problem = if crate::input::nested_too_deep(&e) {
            format!(
                "arrays and objects nested more than {} deep (the most a request body may nest)",
                crate::input::JSON_MAX_DEPTH
            )
        } else {
            format!("not valid JSON: {}", crate::input::json_error_message(&e))
        };
        AdminError::BadRequest(format!(
            "the request body, {}: {problem}; send {what}",
            place(line, col)
        ))
    })?;
    // A key given twice would be read as one of the two, as in a handler file: refused.
    let duplicates = std::str::from_utf8(bytes)
        .map(crate::jsonkeys::duplicates)
        .unwrap_or_default();
    match duplicates.first() {
        None => Ok(json),
        Some(d) => Err(AdminError::BadRequest(format!(
            "the request body, {}: {}; {}",
            place(d.again.0, d.again.1),
            d.message(),
            d.hint()
        ))),
    }
}

/// `line L, column C` of a request body; a column of 0 (the end of a line) is left out, as
/// from a file.
fn place(line: usize, col: usize) -> String {
    if col == 0 {
        format!("line {line}")
    } else {
        format!("line {line}, column {col}")
    }
}

/// Reads a body, refusing what is too large (declared or sent), too slow, or empty.
async fn read_body(body: Body, what: &str) -> Result<bytes::Bytes, AdminError> {
    if http_body::Body::size_hint(&body).lower() > MAX_BODY as u64 {
        return Err(AdminError::TooLarge { limit: MAX_BODY });
    }
    let read = http_body_util::Limited::new(body, MAX_BODY).collect();
    let bytes = tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .map_err(|_| AdminError::Timeout(BODY_TIMEOUT))?
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                AdminError::TooLarge { limit: MAX_BODY }
            } else {
                AdminError::BadRequest(format!("reading the request body failed: {e}"))
            }
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(AdminError::BadRequest(format!(
            "the request body is empty; send {what} as JSON"
        )));
    }
    Ok(bytes)
}

fn method_path(path: Result<Path<(String, String)>, PathRejection>) -> Result<String, AdminError> {
    let Path((service, method)) =
        path.map_err(|e| AdminError::BadRequest(format!("bad path: {e}")))?;
    Ok(format!("{service}/{method}"))
}

async fn status(State(admin): State<Arc<Admin>>) -> Response {
    answer(admin.run(Op::Status).await).await
}

async fn services(State(admin): State<Arc<Admin>>) -> Response {
    answer(admin.run(Op::Services).await).await
}

async fn reload(State(admin): State<Arc<Admin>>) -> Response {
    answer(admin.run(Op::Reload).await).await
}

async fn put_handler(
    State(admin): State<Arc<Admin>>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Response {
    let result = async {
        let method = method_path(path)?;
        let body = read_body(body, ENTRY).await?;
        // Checked like a handler file: a problem, JSON syntax included, is located in the body
        // (and a leading byte-order mark is dropped, as from a file).
        let bytes = crate::input::without_bom(&body);
        // Keys given twice, each a problem as in a handler file (the parsed entry would hold
        // one of the two).
        let source = config::runtime_source(&method);
        let mut problems: Vec<Problem> = std::str::from_utf8(bytes)
            .map(crate::jsonkeys::duplicates)
            .unwrap_or_default()
            .iter()
            .map(|d| Problem::from(&d.handler_error(&source)))
            .collect();
        let entry: Json = serde_json::from_slice(bytes).map_err(|e| {
            let (message, hint) = if crate::input::nested_too_deep(&e) {
                (
                    format!(
                        "arrays and objects nested more than {} deep (the most a handler entry may nest)",
                        crate::input::JSON_MAX_DEPTH
                    ),
                    "nest its values less deeply".to_owned(),
                )
            } else {
                (
                    format!(
                        "the request body is not valid JSON: {}",
                        crate::input::json_error_message(&e)
                    ),
                    format!("send {ENTRY}"),
                )
            };
            let (line, col) = crate::input::json_error_at(bytes, &e);
            let problem = StartupError::Handler {
                location: Location::at(&source, line, col),
                entry: String::new(),
                message,
                hint: Some(hint),
            };
            problems.push(Problem::from(&problem));
            AdminError::Invalid(std::mem::take(&mut problems))
        })?;
        if !problems.is_empty() {
            return Err(AdminError::Invalid(problems));
        }
        // Valid JSON is valid UTF-8.
        let text = String::from_utf8(bytes.to_vec()).ok();
        admin
            .run(Op::PutHandler {
                method,
                entry,
                text,
            })
            .await
    };
    answer(result.await).await
}

async fn remove_handler(
    State(admin): State<Arc<Admin>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    let result = async {
        let method = method_path(path)?;
        admin.run(Op::RemoveHandler { method }).await
    };
    answer(result.await).await
}

async fn reset(State(admin): State<Arc<Admin>>) -> Response {
    answer(admin.run(Op::Reset).await).await
}

async fn list_calls(
    State(admin): State<Arc<Admin>>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let result = async {
        let Query(pairs) =
            query.map_err(|e| AdminError::BadRequest(format!("bad query string: {e}")))?;
        admin.run(Op::ListCalls(pairs)).await
    };
    answer(result.await).await
}

async fn get_call(
    State(admin): State<Arc<Admin>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        let Path(id) = id.map_err(|e| AdminError::BadRequest(format!("bad path: {e}")))?;
        admin.run(Op::GetCall(id)).await
    };
    answer(result.await).await
}

async fn clear_journal(State(admin): State<Arc<Admin>>) -> Response {
    answer(admin.run(Op::ClearJournal).await).await
}

async fn verify(State(admin): State<Arc<Admin>>, body: Body) -> Response {
    let result = async {
        let body = read_json(
            body,
            "a verify: {\"method\": \"pkg.Service/Method\", \"when\": {…}, \"exactly\": 1}",
        )
        .await?;
        admin.run(Op::Verify(body)).await
    };
    answer(result.await).await
}

async fn no_route(method: Method, uri: Uri) -> Response {
    error_response(&AdminError::NotFound(format!(
        "no route {method} {}; the admin API has {ROUTES}",
        uri.path()
    )))
}

async fn wrong_method(method: Method, uri: Uri) -> impl IntoResponse {
    let mut resp = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({
            "error": "method_not_allowed",
            "message": format!("{} does not take {method}; the admin API has {ROUTES}", uri.path()),
        }),
    );
    *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    resp
}
