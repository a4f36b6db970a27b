//! GET /console/events: the live updates, as server-sent events. Every second the list of jobs
//! (as the jobs page shows it, in the same filter) is read again and sent when it changed; the
//! console's script redraws the table, or the job page when its job moved on.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State as Shared};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use super::pages::{Filter, listed};
use crate::serve::Server;

/// How often the list is read again.
const EVERY: Duration = Duration::from_secs(1);

pub(super) async fn stream(
    Shared(server): Shared<Arc<Server>>,
    Query(filter): Query<Filter>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let state = filter.state();
    let updates = futures_util::stream::unfold(String::new(), move |last| {
        let server = server.clone();
        async move {
            loop {
                let now = match listed(&server, state) {
                    Ok(jobs) => serde_json::json!({ "jobs": jobs }).to_string(),
                    // The store is away: say nothing until it is back.
                    Err(_) => last.clone(),
                };
                if now != last {
                    let event = Event::default().event("jobs").data(&now);
                    return Some((Ok(event), now));
                }
                tokio::time::sleep(EVERY).await;
            }
        }
    });
    Sse::new(updates).keep_alive(KeepAlive::default())
}
