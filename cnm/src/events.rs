//! What happens to networks and endpoints, as it happens (`weft events`,
//! `GET /v1/events`), like `docker events`.
//!
//! # Theory of operation
//!
//! The controller emits an [`Event`] after each change it has made durable
//! (the state file saved): a network created or removed, an endpoint
//! connected or disconnected; and, with a cluster, a member that joined,
//! became suspect, went down or left ([`member_changes`], from the
//! membership the controller follows). Events go to a broadcast channel; every
//! `GET /v1/events` subscribes and streams them as JSON lines. The last
//! [`HISTORY`] events are also kept in memory, so a subscriber may ask for
//! the ones since a time first (`?since=`, `weft events --since 10m`);
//! the history and the subscription are taken under one lock, so nothing
//! falls between them and nothing comes twice. A subscriber that falls
//! more than [`BACKLOG`] events behind is told how many it missed (an
//! event of type `lagged`) rather than stalling the controller. Nothing
//! is written to disk: a restarted daemon starts a new history.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Events a slow subscriber may fall behind before it misses some.
pub const BACKLOG: usize = 1024;

/// Events kept for subscribers that ask for the past (`?since=`).
pub const HISTORY: usize = 1000;

/// One change. See the module header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// `network`, `endpoint`, `peer`, or `lagged` (events were missed).
    #[serde(rename = "type")]
    pub kind: String,
    /// `create`, `remove` (networks); `connect`, `disconnect` (endpoints);
    /// `join`, `alive`, `suspect`, `dead`, `leave` (peers).
    pub action: String,
    /// The network.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// The endpoint's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The endpoint's sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// A peer: its name, node id and gossip address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The endpoint's addresses, or the network's subnets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

impl Event {
    /// An event of `kind` and `action` on `network`, now.
    pub fn new(kind: &str, action: &str, network: &str) -> Self {
        Event {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            kind: kind.into(),
            action: action.into(),
            network: network.into(),
            endpoint: None,
            sandbox: None,
            peer: None,
            addresses: Vec::new(),
        }
    }
}

/// The controller's event channel and its recent history.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    /// The last [`HISTORY`] events, oldest first, each with when it was
    /// emitted.
    history: Arc<Mutex<VecDeque<(SystemTime, Event)>>>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(BACKLOG).0,
            history: Arc::default(),
        }
    }
}

impl Events {
    /// Keep the event and tell every subscriber (none listening is fine).
    pub fn emit(&self, event: Event) {
        let mut history = self.history();
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back((SystemTime::now(), event.clone()));
        // Sent under the lock: see `subscribe_since`.
        let _ = self.tx.send(event);
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The kept events emitted at or after `since`, oldest first, and a
    /// subscriber for every event after them.
    pub fn subscribe_since(&self, since: SystemTime) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = self.history();
        let past = history
            .iter()
            .filter(|(at, _)| *at >= since)
            .map(|(_, event)| event.clone())
            .collect();
        (past, self.tx.subscribe())
    }

    fn history(&self) -> std::sync::MutexGuard<'_, VecDeque<(SystemTime, Event)>> {
        // A push and a pop leave the queue whole even if a holder panicked.
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The peer events between two views of the membership (member key →
/// (description, state)): a new member `join`s (or shows up `suspect` or
/// `dead`), a changed state is that state, a vanished member `leave`s.
pub fn member_changes(
    before: &std::collections::BTreeMap<String, (String, String)>,
    now: &std::collections::BTreeMap<String, (String, String)>,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut peer = |action: &str, description: &str| {
        let mut event = Event::new("peer", action, "");
        event.peer = Some(description.to_owned());
        events.push(event);
    };
    for (key, (description, state)) in now {
        match before.get(key) {
            None if state == "alive" => peer("join", description),
            None => peer(state, description),
            Some((_, old)) if old != state => peer(state, description),
            Some(_) => {}
        }
    }
    for (key, (description, _)) in before {
        if !now.contains_key(key) {
            peer("leave", description);
        }
    }
    events
}

/// The next event for a subscriber: a `lagged` event when it fell behind,
/// None when the channel is closed.
pub async fn next(rx: &mut broadcast::Receiver<Event>) -> Option<Event> {
    match rx.recv().await {
        Ok(event) => Some(event),
        Err(broadcast::error::RecvError::Lagged(missed)) => {
            let mut event = Event::new("lagged", &missed.to_string(), "");
            event.action = format!("missed {missed}");
            Some(event)
        }
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_changes_say_join_state_changes_and_leave() {
        let view = |members: &[(&str, &str)]| {
            members
                .iter()
                .map(|(id, state)| ((*id).to_owned(), (format!("h {id}"), (*state).to_owned())))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let before = view(&[("a", "alive"), ("b", "alive"), ("c", "suspect")]);
        let now = view(&[("a", "alive"), ("b", "suspect"), ("d", "alive")]);
        let events: Vec<(String, String)> = member_changes(&before, &now)
            .into_iter()
            .map(|e| (e.action, e.peer.unwrap_or_default()))
            .collect();
        assert_eq!(
            events,
            [
                ("suspect".to_owned(), "h b".to_owned()),
                ("join".to_owned(), "h d".to_owned()),
                ("leave".to_owned(), "h c".to_owned()),
            ]
        );
        assert!(member_changes(&now, &now).is_empty());
    }

    #[test]
    fn the_history_since_a_time_comes_first_and_is_bounded() {
        let events = Events::default();
        events.emit(Event::new("network", "create", "old"));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let since = SystemTime::now();
        events.emit(Event::new("network", "create", "new"));
        let (past, mut rx) = events.subscribe_since(since);
        let names: Vec<&str> = past.iter().map(|e| e.network.as_str()).collect();
        assert_eq!(names, ["new"]);
        events.emit(Event::new("network", "remove", "new"));
        assert_eq!(rx.try_recv().map(|e| e.action), Ok("remove".to_owned()));
        let (all, _) = events.subscribe_since(SystemTime::UNIX_EPOCH);
        assert_eq!(all.len(), 3);
        for i in 0..HISTORY + 10 {
            events.emit(Event::new("network", "create", &format!("n{i}")));
        }
        let (all, _) = events.subscribe_since(SystemTime::UNIX_EPOCH);
        assert_eq!(all.len(), HISTORY);
        assert_eq!(all[0].network, "n10", "the oldest went first");
    }

    #[tokio::test]
    async fn subscribers_see_what_follows_and_are_told_what_they_missed() {
        let events = Events::default();
        events.emit(Event::new("network", "create", "before"));
        let mut rx = events.subscribe();
        events.emit(Event::new("network", "create", "n1"));
        let first = next(&mut rx).await.expect("an event");
        assert_eq!(
            (first.kind.as_str(), first.network.as_str()),
            ("network", "n1")
        );
        for i in 0..BACKLOG + 5 {
            events.emit(Event::new("network", "remove", &format!("n{i}")));
        }
        let lagged = next(&mut rx).await.expect("an event");
        assert_eq!(lagged.kind, "lagged");
        assert_eq!(lagged.action, "missed 5");
        let json = serde_json::to_string(&first).unwrap();
        assert!(
            json.contains("\"type\":\"network\"") && !json.contains("endpoint"),
            "{json}"
        );
    }
}
