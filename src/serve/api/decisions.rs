//! The routes where a human decides: the escalations waiting, approve and reject (made by
//! `serve::decide`, which the console shares).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State as Shared};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, ApiError};
use crate::serve::Server;
use crate::serve::decide::{self, Refused};

pub(super) async fn escalations(Shared(server): Shared<Arc<Server>>) -> Answer {
    let found = decide::escalations(&server).await?;
    let rows: Vec<Value> = found
        .iter()
        .map(|f| {
            json!({"id": f.escalation.id, "state": f.state(), "kind": f.escalation.kind,
                   "reason": f.escalation.reason, "created_at": f.escalation.created_at})
        })
        .collect();
    Ok(Json(json!({"escalations": rows})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    by: String,
    note: Option<String>,
}

fn decision(body: &Bytes) -> Result<Decision, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::NotFound(why) => ApiError(StatusCode::NOT_FOUND, why),
            Refused::Invalid(why) => ApiError(StatusCode::BAD_REQUEST, why),
            Refused::Failed(e) => e.into(),
        }
    }
}

pub(super) async fn approve(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Answer {
    let d = decision(&body)?;
    let done = decide::approve(&server, &id, &d.by, d.note).await?;
    Ok(Json(done).into_response())
}

pub(super) async fn reject(
    Shared(server): Shared<Arc<Server>>,
    UrlPath(id): UrlPath<String>,
    body: Bytes,
) -> Answer {
    let d = decision(&body)?;
    let done = decide::reject(&server, &id, &d.by, d.note.unwrap_or_default()).await?;
    Ok(Json(done).into_response())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever a client sends as an approve or reject body, it is a decision to check
        /// further, or a 400 saying what is wrong: never a panic, never anything else.
        #[test]
        fn any_body_is_a_decision_or_a_clear_400(
            body in prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200),
                "\\{\"by\": *\"[^\"]{0,20}\"(, *\"note\": *(null|\"[^\"]{0,20}\"|[0-9]+))?(, *\"[a-z]{1,5}\": *1)?\\}"
                    .prop_map(String::into_bytes),
            ],
        ) {
            match decision(&Bytes::from(body.clone())) {
                Ok(d) => {
                    let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    prop_assert_eq!(sent["by"].as_str(), Some(d.by.as_str()));
                    prop_assert_eq!(sent["note"].as_str(), d.note.as_deref());
                }
                Err(ApiError(status, message)) => {
                    prop_assert_eq!(status, StatusCode::BAD_REQUEST);
                    prop_assert!(!message.is_empty());
                }
            }
        }
    }
}
