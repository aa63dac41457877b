//! A deterministic [`Engine`] for pool tests: no model, no ONNX Runtime.
//!
//! Token `i` of a request is its first prompt id + `i`, with text `"t{i} "`. Every request
//! waiting at a step joins the batch, up to a batch size the control may set; `max_tokens`, closed receivers (counted as
//! cancellations) and deadlines are honoured like the real engine. A shared
//! [`FakeControl`] sets a per-step sleep, makes the factory fail, arms a panic or an error
//! for the engine serving a given request, and records which threads ran factories and
//! steps and which thread served each request.

#![allow(dead_code)] // each test file uses its own subset

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trendstory::engine::{
    Engine, EngineError, EngineSnapshot, FinishReason, GenerationEvent, GenerationRequest,
    GenerationStats,
};
use trendstory::inference::EngineFactory;

/// How an armed failure strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// `step` panics.
    Panic,
    /// `step` returns `EngineError::Inference`.
    Error,
}

#[derive(Default)]
struct Inner {
    step_delay_ms: AtomicU64,
    /// Requests in the batch at most; 0 for no limit.
    max_batch: AtomicUsize,
    /// The engine holding a request with this first prompt id fails at its next step.
    armed: Mutex<Option<(u32, FailMode)>>,
    fail_loads: AtomicBool,
    factory_calls: AtomicUsize,
    engines_created: AtomicUsize,
    cancelled: AtomicUsize,
    factory_threads: Mutex<BTreeSet<String>>,
    step_threads: Mutex<BTreeSet<String>>,
    /// First prompt id of each admitted request -> the thread that admitted it.
    served_by: Mutex<HashMap<u32, String>>,
}

/// Steers and observes every engine its factory builds; clone it freely.
#[derive(Clone, Default)]
pub struct FakeControl(Arc<Inner>);

fn current_thread() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_string()
}

impl FakeControl {
    /// A factory building [`FakeEngine`]s tied to this control.
    pub fn factory(&self) -> EngineFactory {
        let control = self.clone();
        Arc::new(move || {
            let inner = &control.0;
            inner.factory_calls.fetch_add(1, Ordering::SeqCst);
            inner
                .factory_threads
                .lock()
                .unwrap()
                .insert(current_thread());
            if inner.fail_loads.load(Ordering::SeqCst) {
                return Err(EngineError::ModelDirMissing {
                    path: PathBuf::from("/nonexistent/model"),
                }
                .into());
            }
            inner.engines_created.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FakeEngine {
                control: control.clone(),
                waiting: Vec::new(),
                active: Vec::new(),
                steps: 0,
                tokens: 0,
            }) as Box<dyn Engine>)
        })
    }

    /// At most `size` requests join the batch; the rest wait (and count as waiting).
    pub fn set_max_batch(&self, size: usize) {
        self.0.max_batch.store(size, Ordering::SeqCst);
    }

    pub fn set_step_delay(&self, delay: Duration) {
        self.0
            .step_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The engine serving the request whose prompt starts with `first_id` fails next step.
    pub fn fail_while_serving(&self, first_id: u32, mode: FailMode) {
        *self.0.armed.lock().unwrap() = Some((first_id, mode));
    }

    pub fn fail_loads(&self, fail: bool) {
        self.0.fail_loads.store(fail, Ordering::SeqCst);
    }

    pub fn factory_calls(&self) -> usize {
        self.0.factory_calls.load(Ordering::SeqCst)
    }

    pub fn engines_created(&self) -> usize {
        self.0.engines_created.load(Ordering::SeqCst)
    }

    /// Sequences that left because their receiver closed or their deadline passed.
    pub fn cancelled(&self) -> usize {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    pub fn factory_threads(&self) -> BTreeSet<String> {
        self.0.factory_threads.lock().unwrap().clone()
    }

    pub fn step_threads(&self) -> BTreeSet<String> {
        self.0.step_threads.lock().unwrap().clone()
    }

    /// The thread that admitted the request whose prompt starts with `first_id`.
    pub fn served_by(&self, first_id: u32) -> Option<String> {
        self.0.served_by.lock().unwrap().get(&first_id).cloned()
    }
}

struct Sequence {
    request: GenerationRequest,
    generated: usize,
    admitted_at: Instant,
    first_token_at: Option<Instant>,
}

impl Sequence {
    fn first_id(&self) -> u32 {
        first_id(&self.request)
    }

    fn stats(&self, finish_reason: FinishReason) -> GenerationStats {
        let now = Instant::now();
        GenerationStats {
            finish_reason,
            prompt_tokens: self.request.prompt_ids.len(),
            generated_tokens: self.generated,
            queue_time: self.admitted_at - self.request.received_at,
            prefill_time: Duration::ZERO,
            time_to_first_token: self.first_token_at.map(|t| t - self.request.received_at),
            decode_time: self.first_token_at.map_or(Duration::ZERO, |t| now - t),
            decode_tokens_per_second: 0.0,
        }
    }
}

fn first_id(request: &GenerationRequest) -> u32 {
    request.prompt_ids.first().copied().unwrap_or(0)
}

/// See the module doc.
pub struct FakeEngine {
    control: FakeControl,
    waiting: Vec<GenerationRequest>,
    active: Vec<Sequence>,
    steps: u64,
    tokens: u64,
}

impl FakeEngine {
    fn armed_failure(&self) -> Option<FailMode> {
        let mut armed = self.control.0.armed.lock().unwrap();
        let (id, mode) = (*armed)?;
        let serving = self.active.iter().any(|s| s.first_id() == id)
            || self.waiting.iter().any(|r| first_id(r) == id);
        if serving {
            *armed = None;
            Some(mode)
        } else {
            None
        }
    }
}

impl Engine for FakeEngine {
    fn submit(&mut self, request: GenerationRequest) {
        self.waiting.push(request);
    }

    fn step(&mut self) -> Result<(), EngineError> {
        let inner = &self.control.0;
        std::thread::sleep(Duration::from_millis(
            inner.step_delay_ms.load(Ordering::SeqCst),
        ));
        let thread = current_thread();
        inner.step_threads.lock().unwrap().insert(thread.clone());
        match self.armed_failure() {
            Some(FailMode::Panic) => panic!("fake engine: injected panic"),
            Some(FailMode::Error) => {
                return Err(EngineError::Inference(
                    "fake engine: injected failure".into(),
                ))
            }
            None => {}
        }
        let now = Instant::now();
        let room = match inner.max_batch.load(Ordering::SeqCst) {
            0 => usize::MAX,
            size => size.saturating_sub(self.active.len()),
        };
        let joining = room.min(self.waiting.len());
        for request in self.waiting.drain(..joining) {
            inner
                .served_by
                .lock()
                .unwrap()
                .insert(first_id(&request), thread.clone());
            self.active.push(Sequence {
                request,
                generated: 0,
                admitted_at: now,
                first_token_at: None,
            });
        }
        let mut tokens = 0;
        self.active.retain_mut(|seq| {
            let events = &seq.request.events;
            let expired = seq.request.deadline.is_some_and(|d| now >= d);
            if events.is_closed() || expired {
                inner.cancelled.fetch_add(1, Ordering::SeqCst);
                let _ = events.send(GenerationEvent::Done(seq.stats(FinishReason::Cancelled)));
                return false;
            }
            if seq.generated < seq.request.params.max_tokens {
                let i = seq.generated;
                let _ = events.send(GenerationEvent::Token {
                    token_id: seq.first_id() + i as u32,
                    text: format!("t{i} "),
                    logit: 0.0,
                });
                seq.generated += 1;
                tokens += 1;
                seq.first_token_at.get_or_insert(now);
            }
            if seq.generated >= seq.request.params.max_tokens {
                let _ = events.send(GenerationEvent::Done(seq.stats(FinishReason::Length)));
                return false;
            }
            true
        });
        self.steps += 1;
        self.tokens += tokens;
        Ok(())
    }

    fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            waiting_user: self.waiting.len(),
            running: self.active.len(),
            steps: self.steps,
            passes: self.steps,
            tokens: self.tokens,
            ..EngineSnapshot::default()
        }
    }

    fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.active.is_empty()
    }

    fn fail_all(&mut self, reason: &str) {
        let waiting = self.waiting.drain(..);
        let active = self.active.drain(..).map(|s| s.request);
        for request in waiting.chain(active) {
            let _ = request
                .events
                .send(GenerationEvent::Error(reason.to_string()));
        }
    }
}
