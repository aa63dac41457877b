//! [`StoryCache`]: finished stories and the generations in flight, both keyed by
//! [`StoryKey`] in `DashMap`s, so lookups from every HTTP worker never wait on one lock.
//!
//! Finished stories live for `ttl_secs`; past `max_entries` or `max_bytes` the least
//! recently used go first. A generation in flight is a [`Flight`]: it keeps every text
//! delta so far, so a subscriber that joins late still gets the whole story from the
//! start, and it counts its subscribers: when the last one leaves before the end, the
//! flight leaves the map and its driver is told to cancel the generation.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::{watch, Notify};

use super::config::CacheConfig;
use super::{Story, StoryError, Style};
use crate::engine::SamplingParams;
use crate::trends::normalize::dedupe_key;

/// What makes two story requests identical: topic (case and punctuation insensitive),
/// style, model and every sampling parameter, the seed only when the client gave one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoryKey {
    topic: String,
    style: Style,
    model: Arc<str>,
    max_tokens: usize,
    /// Floats by their bits: equal parameters give equal keys.
    temperature: u32,
    top_p: u32,
    top_k: usize,
    repetition_penalty: u32,
    seed: Option<u64>,
}

impl StoryKey {
    pub fn new(
        topic: &str,
        style: Style,
        model: &Arc<str>,
        params: &SamplingParams,
        seed: Option<u64>,
    ) -> Self {
        Self {
            topic: dedupe_key(topic),
            style,
            model: Arc::clone(model),
            max_tokens: params.max_tokens,
            temperature: params.temperature.to_bits(),
            top_p: params.top_p.to_bits(),
            top_k: params.top_k,
            repetition_penalty: params.repetition_penalty.to_bits(),
            seed,
        }
    }

    /// The same request with this seed.
    pub fn with_seed(&self, seed: u64) -> Self {
        Self {
            seed: Some(seed),
            ..self.clone()
        }
    }

    /// The seed of this request's variant `index` ("another story", `super::another`):
    /// the same on every replica and every run of the same build, below 2^32 so that a
    /// browser's numbers hold it exactly.
    pub fn variant_seed(&self, index: usize) -> u64 {
        let digest = self.digest(&format!("variant {index}"));
        u64::from(u32::from_be_bytes([
            digest[0], digest[1], digest[2], digest[3],
        ]))
    }

    /// The id of the story of this key when it has a seed: the same story (same seed, same
    /// request) has the same id on every replica, so a client's list of stories it has seen
    /// means the same to all of them.
    pub fn story_id(&self) -> String {
        let digest = self.digest("id");
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("story-{hex}")
    }

    /// SHA-256 of every field and `purpose`, in a fixed text form (stable across builds,
    /// unlike `std`'s hashers).
    fn digest(&self, purpose: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let text = format!(
            "{purpose}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{}\0{:?}",
            self.topic,
            self.style.as_str(),
            self.model,
            self.max_tokens,
            self.temperature,
            self.top_p,
            self.top_k,
            self.repetition_penalty,
            self.seed,
        );
        Sha256::digest(text.as_bytes()).into()
    }
}

/// A finished story in the cache.
struct Cached {
    story: Arc<Story>,
    expires: Instant,
    /// Tick of the last hit, for LRU eviction.
    last_used: AtomicU64,
}

/// What a lookup found.
pub enum Lookup {
    /// A finished story.
    Hit(Arc<Story>),
    /// An identical generation is running: follow it from its first delta.
    Follow(Subscription),
    /// Nothing: the caller must start the generation and feed this flight.
    Lead(Arc<Flight>, Subscription),
}

/// Finished stories and generations in flight; see the module doc.
pub struct StoryCache {
    stories: DashMap<StoryKey, Cached>,
    flights: DashMap<StoryKey, Arc<Flight>>,
    config: CacheConfig,
    bytes: AtomicUsize,
    clock: AtomicU64,
    /// Fresh stories pushed out by the bounds (see [`CacheUsage::evictions`]).
    evictions: AtomicU64,
}

/// What the cache holds, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    pub entries: usize,
    pub bytes: usize,
    /// Stories removed before their TTL to keep `max_entries` and `max_bytes`, since
    /// start: a cache too small for the stories asked within one TTL.
    pub evictions: u64,
}

impl StoryCache {
    pub fn new(config: CacheConfig) -> Self {
        Self {
            stories: DashMap::new(),
            flights: DashMap::new(),
            config,
            bytes: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.config.ttl_secs)
    }

    /// A fresh finished story, if any.
    pub fn get(&self, key: &StoryKey) -> Option<Arc<Story>> {
        let now = Instant::now();
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(cached) = self.stories.get(key) {
            if cached.expires > now {
                cached.last_used.store(tick, Ordering::Relaxed);
                return Some(Arc::clone(&cached.story));
            }
        }
        if let Some((_, old)) = self.stories.remove_if(key, |_, c| c.expires <= now) {
            self.bytes.fetch_sub(old.story.size(), Ordering::Relaxed);
        }
        None
    }

    /// True when a fresh story is cached (without counting as a use, so counting what is
    /// ready never keeps a story from eviction), with its size.
    pub fn peek(&self, key: &StoryKey) -> Option<usize> {
        let now = Instant::now();
        self.stories
            .get(key)
            .filter(|cached| cached.expires > now)
            .map(|cached| cached.story.size())
    }

    /// Drops a finished story (a variant of a trend that left the top, or an eviction);
    /// true when there was one.
    pub fn remove(&self, key: &StoryKey) -> bool {
        let removed = self.stories.remove(key);
        if let Some((_, old)) = &removed {
            self.bytes.fetch_sub(old.story.size(), Ordering::Relaxed);
        }
        removed.is_some()
    }

    /// True while an identical generation runs.
    pub fn in_flight(&self, key: &StoryKey) -> bool {
        self.flights.contains_key(key)
    }

    /// A finished story, else a subscription to the identical generation in flight, else
    /// a new flight that the caller leads.
    pub fn lookup(self: &Arc<Self>, key: &StoryKey) -> Lookup {
        if let Some(story) = self.get(key) {
            return Lookup::Hit(story);
        }
        // The entry lock makes joining and the last subscriber's leaving exclusive, so a
        // joiner never subscribes to a flight that is being cancelled.
        match self.flights.entry(key.clone()) {
            Entry::Occupied(e) => Lookup::Follow(Subscription::new(self, key, e.get())),
            Entry::Vacant(e) => {
                let flight = Arc::new(Flight::new());
                e.insert(Arc::clone(&flight));
                let subscription = Subscription::new(self, key, &flight);
                Lookup::Lead(flight, subscription)
            }
        }
    }

    /// A flight outside the map, for a caller that shares it with nobody (a request that
    /// may not be cached, or pre-generation); it is cancelled when its subscriber leaves.
    pub fn private_flight() -> (Arc<Flight>, Subscription) {
        let flight = Arc::new(Flight::new());
        flight.subscribers.fetch_add(1, Ordering::SeqCst);
        let subscription = Subscription {
            flight: Arc::clone(&flight),
            cursor: 0,
            leave: None,
        };
        (flight, subscription)
    }

    /// Ends a led flight: removes it from the map (if it is still the one there).
    pub fn land(&self, key: &StoryKey, flight: &Arc<Flight>) {
        self.flights.remove_if(key, |_, f| Arc::ptr_eq(f, flight));
    }

    /// Stores a finished story, then evicts expired and least recently used stories
    /// until both bounds hold.
    pub fn insert(&self, key: StoryKey, story: Arc<Story>) {
        if self.config.max_entries == 0 || story.size() > self.config.max_bytes {
            return;
        }
        let size = story.size();
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let cached = Cached {
            story,
            expires: Instant::now() + self.ttl(),
            last_used: AtomicU64::new(tick),
        };
        if let Some(old) = self.stories.insert(key, cached) {
            self.bytes.fetch_sub(old.story.size(), Ordering::Relaxed);
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.evict();
    }

    /// Stories held, their bytes and the evictions so far.
    pub fn usage(&self) -> CacheUsage {
        CacheUsage {
            entries: self.stories.len(),
            bytes: self.bytes.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    fn evict(&self) {
        let now = Instant::now();
        let over = |cache: &Self| {
            cache.stories.len() > cache.config.max_entries
                || cache.bytes.load(Ordering::Relaxed) > cache.config.max_bytes
        };
        if !over(self) {
            return;
        }
        // Expired first, then by age of last use. O(n) per eviction round; n is bounded by
        // max_entries and rounds happen only on inserts past a bound.
        let mut candidates: Vec<(bool, u64, StoryKey)> = self
            .stories
            .iter()
            .map(|e| {
                let expired = e.expires <= now;
                (
                    !expired,
                    e.last_used.load(Ordering::Relaxed),
                    e.key().clone(),
                )
            })
            .collect();
        candidates.sort_by_key(|c| (c.0, c.1));
        for (fresh, _, key) in candidates {
            if !over(self) {
                break;
            }
            if self.remove(&key) && fresh {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Called when a subscriber of a shared flight leaves: the last one to leave before
    /// the end takes the flight out of the map and cancels it.
    fn leave(&self, key: &StoryKey, flight: &Arc<Flight>) {
        let removed = self.flights.remove_if(key, |_, f| {
            Arc::ptr_eq(f, flight) && f.subscribers.load(Ordering::SeqCst) == 0
        });
        if removed.is_some() {
            flight.cancel.notify_one();
        }
    }
}

/// One event of a flight, as each subscriber sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum FlightEvent {
    Delta(String),
    End(Result<Arc<Story>, StoryError>),
}

#[derive(Default)]
struct FlightState {
    deltas: Vec<String>,
    end: Option<Result<Arc<Story>, StoryError>>,
}

/// One generation shared by its subscribers; fed by the task that drives it.
pub struct Flight {
    state: Mutex<FlightState>,
    /// Bumped on every change; subscribers wait on it.
    version: watch::Sender<u64>,
    subscribers: AtomicUsize,
    /// Told (one permit, never lost) when the last subscriber left before the end.
    cancel: Notify,
}

impl Flight {
    fn new() -> Self {
        Self {
            state: Mutex::new(FlightState::default()),
            version: watch::channel(0).0,
            subscribers: AtomicUsize::new(0),
            cancel: Notify::new(),
        }
    }

    /// Adds a text delta for every subscriber, present and future.
    pub fn push(&self, delta: String) {
        self.lock().deltas.push(delta);
        self.version.send_modify(|v| *v += 1);
    }

    /// Ends the flight; later calls are ignored.
    pub fn end(&self, result: Result<Arc<Story>, StoryError>) {
        self.lock().end.get_or_insert(result);
        self.version.send_modify(|v| *v += 1);
    }

    /// Resolves when every subscriber has left before the end.
    pub async fn cancelled(&self) {
        self.cancel.notified().await;
    }

    /// Subscribers now.
    #[cfg(test)]
    fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FlightState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One subscriber's view of a flight: every delta from the first, then the end.
pub struct Subscription {
    flight: Arc<Flight>,
    cursor: usize,
    /// The cache and key to leave on drop; `None` for a private flight.
    leave: Option<(Arc<StoryCache>, StoryKey)>,
}

impl Subscription {
    fn new(cache: &Arc<StoryCache>, key: &StoryKey, flight: &Arc<Flight>) -> Self {
        flight.subscribers.fetch_add(1, Ordering::SeqCst);
        Self {
            flight: Arc::clone(flight),
            cursor: 0,
            leave: Some((Arc::clone(cache), key.clone())),
        }
    }

    /// The next delta, or the end (returned again on every later call).
    pub async fn next(&mut self) -> FlightEvent {
        let mut version = self.flight.version.subscribe();
        loop {
            version.borrow_and_update();
            {
                let state = self.flight.lock();
                if let Some(delta) = state.deltas.get(self.cursor) {
                    self.cursor += 1;
                    return FlightEvent::Delta(delta.clone());
                }
                if let Some(end) = &state.end {
                    return FlightEvent::End(end.clone());
                }
            }
            // The sender lives in the flight, which this subscription keeps alive.
            if version.changed().await.is_err() {
                return FlightEvent::End(Err(StoryError::Cancelled));
            }
        }
    }

    /// Waits for the end, skipping deltas.
    pub async fn finish(mut self) -> Result<Arc<Story>, StoryError> {
        loop {
            if let FlightEvent::End(end) = self.next().await {
                return end;
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let left = self.flight.subscribers.fetch_sub(1, Ordering::SeqCst) == 1;
        let ended = self.flight.lock().end.is_some();
        if !left || ended {
            return;
        }
        match &self.leave {
            Some((cache, key)) => cache.leave(key, &self.flight),
            None => self.flight.cancel.notify_one(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stories::StoryEnd;

    fn key(topic: &str, seed: u64) -> StoryKey {
        StoryKey::new(
            topic,
            Style::default(),
            &Arc::from("model"),
            &SamplingParams::default(),
            Some(seed),
        )
    }

    fn story(text: &str) -> Arc<Story> {
        Arc::new(Story {
            id: "s".into(),
            topic: "t".into(),
            trend: None,
            style: Style::default(),
            text: text.into(),
            model: Arc::from("model"),
            max_tokens: 8,
            prompt_tokens: 1,
            tokens: 1,
            finish_reason: StoryEnd::Length,
            seed: Some(1),
            timings: Default::default(),
        })
    }

    fn cache(max_entries: usize, max_bytes: usize) -> Arc<StoryCache> {
        Arc::new(StoryCache::new(CacheConfig {
            ttl_secs: 60,
            max_entries,
            max_bytes,
            cache_unseeded: true,
        }))
    }

    #[test]
    fn keys_ignore_case_and_punctuation_of_the_topic() {
        assert_eq!(key("Solar Eclipse!", 1), key("solar eclipse", 1));
        assert_ne!(key("solar eclipse", 1), key("solar eclipse", 2));
    }

    #[test]
    fn least_recently_used_goes_first_past_max_entries() {
        let c = cache(2, usize::MAX);
        c.insert(key("a", 1), story("a"));
        c.insert(key("b", 1), story("b"));
        assert!(c.get(&key("a", 1)).is_some(), "a is used again");
        c.insert(key("c", 1), story("c"));
        assert!(
            c.get(&key("b", 1)).is_none(),
            "b was the least recently used"
        );
        assert!(c.get(&key("a", 1)).is_some());
        assert!(c.get(&key("c", 1)).is_some());
        assert_eq!((c.usage().entries, c.usage().evictions), (2, 1));
    }

    #[test]
    fn expired_stories_make_room_without_counting_as_evictions() {
        // A TTL of 0: every story is expired as soon as it is stored.
        let c = StoryCache::new(CacheConfig {
            ttl_secs: 0,
            max_entries: 2,
            ..CacheConfig::default()
        });
        for topic in ["a", "b", "c", "d"] {
            c.insert(key(topic, 1), story(topic));
        }
        assert_eq!((c.usage().entries, c.usage().evictions), (2, 0));
    }

    #[test]
    fn the_byte_bound_holds() {
        let one = story(&"x".repeat(1000)).size();
        let c = cache(100, one * 2);
        for i in 0..5 {
            c.insert(key(&format!("t{i}"), 1), story(&"x".repeat(1000)));
        }
        let usage = c.usage();
        assert_eq!((usage.entries, usage.evictions), (2, 3));
        assert!(usage.bytes <= one * 2);
    }

    #[tokio::test]
    async fn a_late_follower_gets_every_delta_from_the_start() {
        let c = cache(10, usize::MAX);
        let k = key("t", 1);
        let Lookup::Lead(flight, mut leader) = c.lookup(&k) else {
            panic!("first lookup leads")
        };
        flight.push("Once ".into());
        flight.push("upon".into());
        assert_eq!(leader.next().await, FlightEvent::Delta("Once ".into()));
        let Lookup::Follow(mut late) = c.lookup(&k) else {
            panic!("second lookup follows")
        };
        assert_eq!(flight.subscribers(), 2);
        flight.push(" a time".into());
        let s = story("Once upon a time");
        flight.end(Ok(Arc::clone(&s)));
        c.land(&k, &flight);
        let mut text = String::new();
        loop {
            match late.next().await {
                FlightEvent::Delta(d) => text.push_str(&d),
                FlightEvent::End(end) => {
                    assert_eq!(end.unwrap(), s);
                    break;
                }
            }
        }
        assert_eq!(text, "Once upon a time");
        assert!(!c.in_flight(&k));
    }

    #[tokio::test]
    async fn the_flight_is_cancelled_only_when_its_last_subscriber_leaves() {
        let c = cache(10, usize::MAX);
        let k = key("t", 1);
        let Lookup::Lead(flight, leader) = c.lookup(&k) else {
            panic!("leads")
        };
        let Lookup::Follow(follower) = c.lookup(&k) else {
            panic!("follows")
        };
        drop(leader);
        assert!(c.in_flight(&k), "one subscriber is left");
        let cancelled = tokio::time::timeout(Duration::from_millis(20), flight.cancelled()).await;
        assert!(cancelled.is_err(), "not cancelled while someone listens");
        drop(follower);
        assert!(!c.in_flight(&k), "a new request starts a new flight");
        tokio::time::timeout(Duration::from_secs(1), flight.cancelled())
            .await
            .expect("cancelled once the last one left");
        assert!(matches!(c.lookup(&k), Lookup::Lead(..)));
    }

    #[tokio::test]
    async fn an_ended_flight_is_not_cancelled_by_leaving() {
        let c = cache(10, usize::MAX);
        let k = key("t", 1);
        let Lookup::Lead(flight, leader) = c.lookup(&k) else {
            panic!("leads")
        };
        flight.end(Ok(story("x")));
        drop(leader);
        let cancelled = tokio::time::timeout(Duration::from_millis(20), flight.cancelled()).await;
        assert!(cancelled.is_err());
    }
}
