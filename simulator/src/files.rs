//! Handlers of the Files API: upload, retrieve, download and delete.

use axum::Json;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::line_faults::truncate_after_lines;
use crate::state::{AppState, StoredFile, new_file_id, unix_secs_now};

/// Maximum size of an uploaded batch input file. OpenAI's API reference gives
/// 200 MB, which the simulator reads as the larger 200 MiB.
pub(crate) const MAX_UPLOAD_BYTES: usize = 200 * 1024 * 1024;

/// Room for the multipart boundaries and the `purpose` field around the file.
pub(crate) const MULTIPART_OVERHEAD_BYTES: usize = 64 * 1024;

/// Handles `POST /v1/files`: stores a multipart upload with `purpose=batch`.
pub(crate) async fn upload_file(
    State(state): State<AppState>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut multipart = multipart.map_err(|rejection| {
        ApiError::invalid_request(format!(
            "Invalid upload: {}. Send the file as multipart/form-data with the fields \
             'purpose' and 'file'.",
            rejection.body_text()
        ))
        .with_status(rejection.status())
    })?;

    let mut purpose: Option<String> = None;
    let mut upload: Option<(String, Bytes)> = None;
    loop {
        let field = multipart.next_field().await.map_err(|error| {
            ApiError::invalid_request(format!("Invalid multipart body: {}.", error.body_text()))
                .with_status(error.status())
        })?;
        let Some(field) = field else {
            break;
        };
        match field.name() {
            Some("purpose") => {
                let text = field.text().await.map_err(|error| {
                    ApiError::invalid_request(format!(
                        "Invalid 'purpose' field: {}.",
                        error.body_text()
                    ))
                    .with_status(error.status())
                })?;
                purpose = Some(text);
            }
            Some("file") => {
                let filename = field.file_name().unwrap_or("upload.jsonl").to_owned();
                let content = field.bytes().await.map_err(|error| {
                    ApiError::invalid_request(format!(
                        "Invalid 'file' field: {}.",
                        error.body_text()
                    ))
                    .with_status(error.status())
                })?;
                upload = Some((filename, content));
            }
            // Other fields, such as `expires_after`, are accepted and ignored.
            _ => {}
        }
    }

    let Some(purpose) = purpose else {
        return Err(missing_parameter("purpose"));
    };
    if purpose != "batch" {
        return Err(ApiError::invalid_request(format!(
            "Invalid value for 'purpose': '{purpose}'. The simulator supports only 'batch'."
        ))
        .with_param("purpose"));
    }
    let Some((filename, content)) = upload else {
        return Err(missing_parameter("file"));
    };
    if content.len() > MAX_UPLOAD_BYTES {
        return Err(ApiError::invalid_request(format!(
            "The file is {} bytes, more than the maximum of {MAX_UPLOAD_BYTES} bytes.",
            content.len()
        ))
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        .with_param("file"));
    }

    let file = StoredFile {
        id: new_file_id(),
        filename,
        purpose: "batch",
        created_at: unix_secs_now(),
        content,
        truncate_at_line: None,
    };
    let object = file.to_object();
    tracing::info!(
        file_id = %file.id,
        bytes = file.content.len(),
        filename = %file.filename,
        "file uploaded"
    );

    let mut store = state.lock();
    store.files_uploaded += 1;
    store.files.insert(file.id.clone(), file);
    Ok(Json(object))
}

/// Handles `GET /v1/files/{id}`.
pub(crate) async fn retrieve_file(
    State(state): State<AppState>,
    Path(file_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let store = state.lock();
    let file = store
        .files
        .get(&file_id)
        .ok_or_else(|| file_not_found(&file_id))?;
    Ok(Json(file.to_object()))
}

/// Handles `GET /v1/files/{id}/content`: returns the stored bytes, cut short
/// if the file has the `truncate_results_at_line` fault.
pub(crate) async fn download_file(
    State(state): State<AppState>,
    Path(file_id): Path<String>,
) -> Result<Response, ApiError> {
    let content = {
        let store = state.lock();
        let file = store
            .files
            .get(&file_id)
            .ok_or_else(|| file_not_found(&file_id))?;
        match file.truncate_at_line {
            Some(line_count) => truncate_after_lines(&file.content, line_count),
            None => file.content.clone(),
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        content,
    )
        .into_response())
}

/// Handles `DELETE /v1/files/{id}`.
pub(crate) async fn delete_file(
    State(state): State<AppState>,
    Path(file_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let removed = state.lock().files.remove(&file_id);
    if removed.is_none() {
        return Err(file_not_found(&file_id));
    }
    tracing::info!(file_id = %file_id, "file deleted");
    Ok(Json(
        json!({"id": file_id, "object": "file", "deleted": true}),
    ))
}

pub(crate) fn file_not_found(file_id: &str) -> ApiError {
    ApiError::not_found(format!("No such File object: {file_id}")).with_param("id")
}

fn missing_parameter(name: &str) -> ApiError {
    ApiError::invalid_request(format!("Missing required parameter: '{name}'.")).with_param(name)
}
