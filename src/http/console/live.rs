//! `GET /console/api/live`: the console's live connection (server-sent events), so pages
//! update by themselves.
//!
//! - `?view=overview&range=hour|day`: an `overview` event every 2 s.
//! - `?view=notification&id=ID`: a `notification` event at once and whenever its record
//!   changes (checked every 500 ms).
//!
//! Invariant: the stream ends with an `expired` event when the session expires (the page then
//! goes to the sign-in page), and at once when the node drains; a failed read is an `error`
//! event, and the stream goes on.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::stream::{self, Stream};
use serde::Deserialize;
use serde_json::json;

use super::session::Viewer;
use super::Console;
use crate::http::error::ApiError;

#[derive(Deserialize)]
pub struct LiveQuery {
    view: Option<String>,
    id: Option<String>,
    range: Option<String>,
}

enum View {
    Overview { minutes: usize },
    Notification { id: String },
}

struct Feed {
    console: Console,
    view: View,
    expires_at: i64,
    last: Option<String>,
    first: bool,
    done: bool,
}

pub async fn live(
    State(console): State<Console>,
    Extension(viewer): Extension<Viewer>,
    Query(q): Query<LiveQuery>,
) -> Result<Response, ApiError> {
    let view = match q.view.as_deref().unwrap_or("overview") {
        "overview" => View::Overview {
            minutes: super::api::range_minutes(q.range.as_deref())?,
        },
        "notification" => {
            let id = q.id.unwrap_or_default();
            crate::http::v1::check_id(&id)?;
            View::Notification { id }
        }
        other => {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid",
                format!("view must be overview or notification, not {other:?}"),
            ))
        }
    };
    let feed = Feed {
        console,
        view,
        expires_at: viewer.expires_at,
        last: None,
        first: true,
        done: false,
    };
    Ok(Sse::new(events(feed))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn events(feed: Feed) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(feed, |mut feed| async move {
        if feed.done {
            return None;
        }
        loop {
            let pause = match feed.view {
                View::Overview { .. } => Duration::from_secs(2),
                View::Notification { .. } => Duration::from_millis(500),
            };
            if !feed.first {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = feed.console.app.shutdown.cancelled() => return None,
                }
            }
            feed.first = false;
            if crate::util::now_ms() >= feed.expires_at {
                feed.done = true;
                let e = Event::default().event("expired").data("{}");
                return Some((Ok(e), feed));
            }
            if let Some(event) = next_event(&mut feed).await {
                return Some((Ok(event), feed));
            }
        }
    })
}

/// The next event to send, or `None` when nothing changed.
async fn next_event(feed: &mut Feed) -> Option<Event> {
    let (name, read) = match &feed.view {
        View::Overview { minutes } => (
            "overview",
            super::api::overview_of(&feed.console, *minutes).await,
        ),
        View::Notification { id } => (
            "notification",
            feed.console
                .app
                .notifications
                .show(id)
                .await
                .map(|n| n.unwrap_or(serde_json::Value::Null))
                .map_err(ApiError::from),
        ),
    };
    let data = match read {
        Ok(v) => v.to_string(),
        Err(e) => {
            let e = Event::default()
                .event("error")
                .data(json!({"message": e.to_string()}).to_string());
            return Some(e);
        }
    };
    if name == "notification" && feed.last.as_deref() == Some(data.as_str()) {
        return None;
    }
    feed.last = Some(data.clone());
    Some(Event::default().event(name).data(data))
}
