//! The scheduler: what each step does, decided from the rows' state alone (plain data, no
//! model), so the policy is tested on its own, as vLLM and mistral.rs keep theirs.
//!
//! Policy, in the spirit of llama.cpp's server and Sarathi-Serve's stall-free batching:
//! - every decoding row gets its next token every step: decode never stalls behind a prompt;
//! - prompt chunks fill what is left of the step's token budget, oldest prompt first (user
//!   prompts before background ones), at most one chunk per prefill lane; a long prompt
//!   spreads over several steps, and a prompt whose shared prefix is kept starts after it;
//! - waiting requests are admitted in order (user requests first) while a slot is free and
//!   their KV tokens (prompt plus `max_tokens`) fit the budget; a user request that does not
//!   fit ends the youngest background sequence (`Preempted`) and takes its place;
//! - background sequences run only while few user sequences do (`background_max_users`):
//!   on a CPU every row of a pass costs the others time, so past it they end (`Preempted`,
//!   retried later) and no more start.

use super::Priority;

/// A sequence holding a slot, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupant {
    pub priority: Priority,
    /// Admission order: smaller is older.
    pub admitted: u64,
    /// KV positions it may need (prompt plus `max_tokens`): what admission counts.
    pub reserved: usize,
    pub phase: Phase,
}

/// Where a sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `done` prompt tokens are in its KV; its next chunk may run up to `stop` (the prompt's
    /// end, or a shared prefix to keep first). `stop == done`: it waits (for another row to
    /// keep the prefix it will start from).
    Prefilling {
        done: usize,
        stop: usize,
    },
    Decoding,
}

/// A waiting request, in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub priority: Priority,
    pub reserved: usize,
    /// Prompt tokens it starts with once admitted (a kept shared prefix), and where its first
    /// chunk stops (see [`Phase::Prefilling`]).
    pub start: usize,
    pub stop: usize,
}

/// The bounds a plan respects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sequences that may hold a slot at once.
    pub slots: usize,
    /// KV positions admitted sequences may reserve in all.
    pub kv_tokens: usize,
    /// Tokens in one pass: every decoding row's, then prompt chunks.
    pub step_tokens: usize,
    /// Prompt chunks in one pass.
    pub lanes: usize,
    /// User sequences above which background ones neither start nor keep their slots.
    pub background_max_users: usize,
}

/// A prompt chunk: `len` tokens of the prompt in `slot`, after the ones it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub slot: usize,
    pub len: usize,
}

/// One step's decisions, applied in this order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Slots whose background sequence ends as `Preempted`.
    pub preempt: Vec<usize>,
    /// `(index into the waiting list, slot)` for each admitted request.
    pub admit: Vec<(usize, usize)>,
    /// Slots that decode one token, in slot order.
    pub decode: Vec<usize>,
    /// Prompt chunks, oldest prompt first.
    pub chunks: Vec<Chunk>,
}

impl Plan {
    /// Tokens the plan's pass processes.
    pub fn tokens(&self) -> usize {
        self.decode.len() + self.chunks.iter().map(|c| c.len).sum::<usize>()
    }
}

/// Decides one step. `slots[i]` is slot `i`'s occupant (slots past the end are free);
/// `waiting` is in arrival order.
pub fn plan(slots: &[Option<Occupant>], waiting: &[Candidate], limits: &Limits) -> Plan {
    let mut plan = Plan::default();
    let mut table: Vec<Option<Occupant>> = slots.to_vec();
    table.resize(table.len().max(limits.slots), None);
    admit(&mut table, waiting, limits, &mut plan);
    if users(&table) > limits.background_max_users {
        for (slot, occupant) in table.iter_mut().enumerate() {
            if occupant
                .as_ref()
                .is_some_and(|o| o.priority == Priority::Background)
            {
                *occupant = None;
                plan.preempt.push(slot);
            }
        }
    }

    plan.decode = (0..table.len())
        .filter(|&s| {
            table[s]
                .as_ref()
                .is_some_and(|o| o.phase == Phase::Decoding)
        })
        .collect();
    let mut budget = limits.step_tokens.saturating_sub(plan.decode.len());
    let mut prompts: Vec<(usize, &Occupant)> = table
        .iter()
        .enumerate()
        .filter_map(|(s, o)| o.as_ref().map(|o| (s, o)))
        .filter(|(_, o)| matches!(o.phase, Phase::Prefilling { done, stop } if done < stop))
        .collect();
    prompts.sort_by_key(|(_, o)| (o.priority == Priority::Background, o.admitted));
    for (slot, occupant) in prompts.into_iter().take(limits.lanes) {
        let Phase::Prefilling { done, stop } = occupant.phase else {
            continue;
        };
        let len = (stop - done).min(budget);
        if len == 0 {
            break;
        }
        plan.chunks.push(Chunk { slot, len });
        budget -= len;
    }
    plan
}

/// User sequences holding a slot.
fn users(table: &[Option<Occupant>]) -> usize {
    table
        .iter()
        .flatten()
        .filter(|o| o.priority == Priority::Interactive)
        .count()
}

/// Admits waiting requests in order, user requests first, into the lowest free slots while
/// slots and KV tokens allow; a user request that does not fit preempts the youngest
/// background sequence, and background requests wait while more than
/// `background_max_users` user sequences run. Stops at the first request that cannot be
/// admitted, so none is overtaken by a younger one of its priority.
fn admit(table: &mut [Option<Occupant>], waiting: &[Candidate], limits: &Limits, plan: &mut Plan) {
    let next_admitted = table
        .iter()
        .flatten()
        .map(|o| o.admitted + 1)
        .max()
        .unwrap_or(0);
    let order = waiting
        .iter()
        .enumerate()
        .filter(|(_, c)| c.priority == Priority::Interactive)
        .chain(
            waiting
                .iter()
                .enumerate()
                .filter(|(_, c)| c.priority == Priority::Background),
        );
    for (index, candidate) in order {
        if candidate.priority == Priority::Background && users(table) > limits.background_max_users
        {
            return;
        }
        loop {
            let reserved: usize = table.iter().flatten().map(|o| o.reserved).sum();
            let free = table[..limits.slots].iter().position(Option::is_none);
            if let Some(slot) = free.filter(|_| reserved + candidate.reserved <= limits.kv_tokens) {
                table[slot] = Some(Occupant {
                    priority: candidate.priority,
                    admitted: next_admitted + plan.admit.len() as u64,
                    reserved: candidate.reserved,
                    phase: Phase::Prefilling {
                        done: candidate.start,
                        stop: candidate.stop,
                    },
                });
                plan.admit.push((index, slot));
                break;
            }
            let youngest_background = (0..table.len())
                .filter(|&s| {
                    table[s]
                        .as_ref()
                        .is_some_and(|o| o.priority == Priority::Background)
                })
                .max_by_key(|&s| table[s].as_ref().map_or(0, |o| o.admitted));
            match youngest_background {
                Some(slot) if candidate.priority == Priority::Interactive => {
                    table[slot] = None;
                    plan.preempt.push(slot);
                }
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        slots: 4,
        kv_tokens: 1000,
        step_tokens: 64,
        lanes: 2,
        background_max_users: 4,
    };

    fn decoding(admitted: u64) -> Option<Occupant> {
        Some(Occupant {
            priority: Priority::Interactive,
            admitted,
            reserved: 100,
            phase: Phase::Decoding,
        })
    }

    fn prefilling(admitted: u64, done: usize, stop: usize) -> Option<Occupant> {
        Some(Occupant {
            priority: Priority::Interactive,
            admitted,
            reserved: 100,
            phase: Phase::Prefilling { done, stop },
        })
    }

    fn background(mut o: Option<Occupant>) -> Option<Occupant> {
        if let Some(o) = o.as_mut() {
            o.priority = Priority::Background;
        }
        o
    }

    fn candidate(priority: Priority, reserved: usize, stop: usize) -> Candidate {
        Candidate {
            priority,
            reserved,
            start: 0,
            stop,
        }
    }

    #[test]
    fn every_decoding_row_decodes_whatever_the_prompts() {
        let slots = [decoding(0), prefilling(1, 0, 500), decoding(2), None];
        let long = [candidate(Priority::Interactive, 100, 900)];
        let plan = plan(&slots, &long, &LIMITS);
        assert_eq!(plan.decode, vec![0, 2]);
        // the prompts share what the decode tokens leave of the budget
        assert_eq!(plan.tokens(), LIMITS.step_tokens);
        assert_eq!(
            plan.chunks,
            vec![Chunk { slot: 1, len: 62 }],
            "the older prompt takes the whole rest of the budget"
        );
        assert_eq!(plan.admit, vec![(0, 3)]);
    }

    #[test]
    fn the_budget_and_the_lanes_bound_a_pass() {
        let slots = [
            prefilling(0, 0, 10),
            prefilling(1, 0, 10),
            prefilling(2, 0, 10),
        ];
        let plan = plan(&slots, &[], &LIMITS);
        assert_eq!(plan.chunks.len(), LIMITS.lanes, "one chunk per lane");
        let tight = Limits {
            step_tokens: 15,
            lanes: 8,
            ..LIMITS
        };
        let plan = super::plan(&slots, &[], &tight);
        assert_eq!(
            plan.chunks,
            vec![Chunk { slot: 0, len: 10 }, Chunk { slot: 1, len: 5 }]
        );
        assert_eq!(plan.tokens(), 15);
    }

    #[test]
    fn a_long_prompt_spreads_over_steps_and_keeps_its_turn() {
        // slot 2 was admitted first: it goes first although its slot number is higher
        let mut slots = vec![prefilling(5, 0, 30), None, prefilling(1, 0, 150)];
        let mut steps = 0;
        let mut order = Vec::new();
        while slots.iter().flatten().any(|o| o.phase != Phase::Decoding) {
            let plan = plan(&slots, &[], &LIMITS);
            assert!(plan.tokens() <= LIMITS.step_tokens);
            for c in &plan.chunks {
                order.push(c.slot);
                let o = slots[c.slot].as_mut().unwrap();
                let Phase::Prefilling { done, stop } = o.phase else {
                    unreachable!()
                };
                o.phase = if done + c.len == stop {
                    Phase::Decoding
                } else {
                    Phase::Prefilling {
                        done: done + c.len,
                        stop,
                    }
                };
            }
            steps += 1;
            assert!(steps < 10, "prompts never finished");
        }
        assert_eq!(steps, 3, "180 tokens at 64 per step");
        assert_eq!(order[0], 2, "the older prompt first");
        assert_eq!(*order.last().unwrap(), 0);
    }

    #[test]
    fn a_waiting_prompt_gets_no_chunk_until_its_prefix_is_kept() {
        let slots = [prefilling(0, 0, 0), prefilling(1, 20, 40)];
        let plan = plan(&slots, &[], &LIMITS);
        assert_eq!(plan.chunks, vec![Chunk { slot: 1, len: 20 }]);
    }

    #[test]
    fn user_prompts_go_before_older_background_ones() {
        let slots = [background(prefilling(0, 0, 60)), prefilling(3, 0, 40)];
        let plan = plan(&slots, &[], &LIMITS);
        assert_eq!(plan.chunks[0], Chunk { slot: 1, len: 40 });
        assert_eq!(plan.chunks[1], Chunk { slot: 0, len: 24 });
    }

    #[test]
    fn admission_is_by_slots_and_kv_tokens_in_order() {
        let slots = [decoding(0), None, None, None];
        let waiting = [
            candidate(Priority::Interactive, 500, 10),
            candidate(Priority::Interactive, 500, 10), // 100 + 500 + 500 > 1000: waits
            candidate(Priority::Interactive, 10, 10),  // fits, but may not overtake
        ];
        let plan = plan(&slots, &waiting, &LIMITS);
        assert_eq!(plan.admit, vec![(0, 1)]);
        assert!(plan.preempt.is_empty());
        // a new admission starts from its kept prefix and prefills in the same step
        let kept = Candidate {
            start: 70,
            ..candidate(Priority::Interactive, 100, 90)
        };
        let plan = super::plan(&[None], &[kept], &LIMITS);
        assert_eq!(plan.admit, vec![(0, 0)]);
        assert_eq!(plan.chunks, vec![Chunk { slot: 0, len: 20 }]);
    }

    #[test]
    fn user_requests_are_admitted_before_older_background_ones() {
        let waiting = [
            candidate(Priority::Background, 10, 10),
            candidate(Priority::Interactive, 10, 10),
        ];
        let one_slot = Limits { slots: 1, ..LIMITS };
        let plan = plan(&[], &waiting, &one_slot);
        assert_eq!(plan.admit, vec![(1, 0)]);
    }

    #[test]
    fn a_user_request_preempts_the_youngest_background_sequence() {
        let slots = [
            background(decoding(0)),
            decoding(1),
            background(prefilling(2, 0, 50)),
            decoding(3),
        ];
        let waiting = [candidate(Priority::Interactive, 100, 30)];
        let plan = plan(&slots, &waiting, &LIMITS);
        assert_eq!(plan.preempt, vec![2]);
        assert_eq!(plan.admit, vec![(0, 2)]);
        assert_eq!(
            plan.decode,
            vec![0, 1, 3],
            "the other background row goes on"
        );
        // a background request never preempts, and waits
        let waiting = [candidate(Priority::Background, 100, 30)];
        let plan = super::plan(&slots, &waiting, &LIMITS);
        assert!(plan.preempt.is_empty() && plan.admit.is_empty());
    }

    #[test]
    fn background_sequences_yield_to_many_users() {
        let busy = Limits {
            background_max_users: 1,
            ..LIMITS
        };
        // One user runs: a background request starts and keeps its slot.
        let slots = [decoding(0), background(decoding(1)), None, None];
        let waiting = [candidate(Priority::Background, 100, 30)];
        let plan = super::plan(&slots, &waiting, &busy);
        assert!(plan.preempt.is_empty());
        assert_eq!(plan.admit, vec![(0, 2)]);
        // A second user arrives: both background sequences end, none starts.
        let slots = [
            decoding(0),
            background(decoding(1)),
            background(decoding(2)),
            None,
        ];
        let waiting = [
            candidate(Priority::Background, 100, 30),
            candidate(Priority::Interactive, 100, 30),
        ];
        let plan = super::plan(&slots, &waiting, &busy);
        assert_eq!(plan.admit, vec![(1, 3)]);
        assert_eq!(plan.preempt, vec![1, 2]);
        assert_eq!(plan.decode, vec![0]);
    }

    #[test]
    fn kv_tokens_free_up_by_preemption_too() {
        let slots = [background(decoding(0)), None];
        let waiting = [candidate(Priority::Interactive, 950, 30)];
        let plan = plan(&slots, &waiting, &LIMITS);
        assert_eq!(plan.preempt, vec![0]);
        assert_eq!(plan.admit, vec![(0, 0)]);
    }
}
