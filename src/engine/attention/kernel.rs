//! The arithmetic of [`super::SlotAttention`] on plain slices, with no ONNX Runtime in it, so
//! it can be tested against a naive attention and timed alone.
//!
//! A pass is cut into tasks of one row and one KV head. A task places the row's new keys
//! (rotated) and values at its positions in its slot, then attends the row's queries of that
//! KV head's group (every query head sharing it, every token of the row) over the slot's
//! keys, a block of keys at a time: each block is read from memory once for all of them,
//! not once per query head. The softmax is online (running max and sum, in fp32), so no
//! score matrix of the whole past is kept. Tasks write disjoint memory, so they can run on
//! any threads.

use std::cell::RefCell;

/// Keys attended per block: a block's keys and values (2 × 64 × head_dim floats) stay in
/// the L1 cache while every query of the task reads them.
const KEY_BLOCK: usize = 64;

/// The attention shape of a layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies the scores (1/sqrt(head_dim) for Llama).
    pub scale: f32,
}

impl Heads {
    /// Floats of one packed token's q|k|v.
    pub fn qkv_width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Query heads per KV head.
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Why these heads cannot be attended, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        Self::check_attributes(self.heads, self.kv_heads, self.scale)?;
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim {} is not even (rotary embedding rotates halves)",
                self.head_dim
            ));
        }
        Ok(())
    }

    /// The part of [`Self::check`] a graph node's attributes decide (head_dim comes with its
    /// KV buffers), so a bad node fails when the session loads.
    pub fn check_attributes(heads: usize, kv_heads: usize, scale: f32) -> Result<(), String> {
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(format!(
                "{heads} query heads do not split into groups over {kv_heads} KV heads"
            ));
        }
        if !scale.is_finite() || scale <= 0.0 {
            return Err(format!("scale {scale} is not a positive number"));
        }
        Ok(())
    }
}

/// One row of a pass: `count` tokens at packed positions `start..start + count`, going to
/// positions `past..past + count` of slot `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub slot: usize,
    pub past: usize,
    pub start: usize,
    pub count: usize,
}

/// One layer's pass, checked: every pointer is in bounds for every task, and tasks write
/// disjoint memory (distinct slots, distinct packed positions).
pub struct Job<'a> {
    heads: Heads,
    qkv: &'a [f32],
    rows: &'a [Row],
    cos: &'a [f32],
    sin: &'a [f32],
    key: *mut f32,
    value: *mut f32,
    out: *mut f32,
    capacity: usize,
    kernel: Kernel,
    _writes: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a job's raw pointers come from `&'a mut` slices (so nothing else touches that
// memory while it lives), and its tasks write disjoint parts of them (see `Job::new`).
unsafe impl Sync for Job<'_> {}

impl<'a> Job<'a> {
    /// Checks a pass against the shapes it claims:
    /// - `qkv`: `[tokens, heads.qkv_width()]`, the rows' tokens one row after another;
    /// - `cos`, `sin`: `[positions, head_dim / 2]` rotary tables;
    /// - `key`, `value`: `[slots, kv_heads, capacity, head_dim]`, written at the rows' new
    ///   positions;
    /// - `out`: `[tokens, heads * head_dim]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        heads: Heads,
        qkv: &'a [f32],
        rows: &'a [Row],
        cos: &'a [f32],
        sin: &'a [f32],
        key: &'a mut [f32],
        value: &'a mut [f32],
        capacity: usize,
        out: &'a mut [f32],
    ) -> Result<Self, String> {
        heads.check()?;
        let (width, dim) = (heads.qkv_width(), heads.head_dim);
        if !qkv.len().is_multiple_of(width) {
            return Err(format!(
                "q|k|v holds {} floats, not whole tokens of {width}",
                qkv.len()
            ));
        }
        let tokens = qkv.len() / width;
        if tokens == 0 || rows.is_empty() {
            return Err("an empty pass (no tokens or no rows)".into());
        }
        if out.len() != tokens * heads.heads * dim {
            return Err(format!(
                "the output holds {} floats, not {tokens} tokens of {}",
                out.len(),
                heads.heads * dim
            ));
        }
        let slot_len = heads.kv_heads * capacity * dim;
        if capacity == 0 || key.len() != value.len() || !key.len().is_multiple_of(slot_len) {
            return Err(format!(
                "KV buffers of {} and {} floats are not slots of {} KV heads × {capacity} positions × {dim}",
                key.len(),
                value.len(),
                heads.kv_heads
            ));
        }
        let slots = key.len() / slot_len;
        let half = dim / 2;
        if cos.len() != sin.len() || !cos.len().is_multiple_of(half) {
            return Err(format!(
                "rotary tables of {} and {} floats are not positions × {half}",
                cos.len(),
                sin.len()
            ));
        }
        let positions = cos.len() / half;
        let mut taken = vec![false; slots];
        let mut next = 0;
        for (i, r) in rows.iter().enumerate() {
            let end = r.past + r.count;
            let why = if r.count == 0 {
                Some("has no tokens".to_string())
            } else if r.start != next {
                Some(format!("starts at token {}, not {next}", r.start))
            } else if r.slot >= slots {
                Some(format!("is in slot {}, of {slots}", r.slot))
            } else if taken[r.slot] {
                Some(format!("shares slot {} with another row", r.slot))
            } else if end > capacity || end > positions {
                Some(format!(
                    "ends at position {end}, past the slot's {capacity} or the {positions} rotary positions"
                ))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(format!("row {i} ({r:?}) {why}"));
            }
            taken[r.slot] = true;
            next = r.start + r.count;
        }
        if next != tokens {
            return Err(format!("the rows cover {next} tokens of {tokens}"));
        }
        Ok(Self {
            heads,
            qkv,
            rows,
            cos,
            sin,
            key: key.as_mut_ptr(),
            value: value.as_mut_ptr(),
            out: out.as_mut_ptr(),
            capacity,
            kernel: Kernel::detect(),
            _writes: std::marker::PhantomData,
        })
    }

    /// Tasks of this job: one per row and KV head.
    pub fn tasks(&self) -> usize {
        self.rows.len() * self.heads.kv_heads
    }

    /// Runs every task on this thread.
    pub fn run_all(&self) {
        for task in 0..self.tasks() {
            // SAFETY: each task once, one at a time.
            unsafe { self.run(task) };
        }
    }

    /// Runs task `task` (< [`Self::tasks`]).
    ///
    /// # Safety
    /// Each task may run at most once per job: two runs of one task write the same memory.
    pub unsafe fn run(&self, task: usize) {
        let (row, kv_head) = (
            self.rows[task / self.heads.kv_heads],
            task % self.heads.kv_heads,
        );
        // The scratch is taken out here: code inside `with` would be compiled without the
        // kernel's instruction set (it is not inlined into the functions that enable it).
        SCRATCH.with_borrow_mut(|scratch| {
            // SAFETY: forwarded from the caller; the kernel's features were detected on this
            // CPU.
            unsafe {
                match self.kernel {
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512 => attend_avx512(self, row, kv_head, scratch),
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2 => attend_avx2(self, row, kv_head, scratch),
                    Kernel::Portable => attend::<false>(self, row, kv_head, scratch),
                }
            }
        })
    }
}

/// The instruction set a job's arithmetic is compiled for, picked once per job from what
/// the CPU has: the same code, vectorized by the compiler for each.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn attend_avx512(job: &Job<'_>, row: Row, kv_head: usize, scratch: &mut Scratch) {
    // SAFETY: forwarded.
    unsafe { attend::<true>(job, row, kv_head, scratch) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(job: &Job<'_>, row: Row, kv_head: usize, scratch: &mut Scratch) {
    // SAFETY: forwarded.
    unsafe { attend::<false>(job, row, kv_head, scratch) }
}

/// Per-thread buffers of a task, kept between tasks.
#[derive(Default)]
struct Scratch {
    queries: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    scores: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// One task: `row`'s keys and values of `kv_head` into its slot, then its group's queries.
/// `AVX512`: the scores through AVX-512 intrinsics (the compiler vectorizes the rest well, but
/// not the many short dot products).
///
/// # Safety
/// As [`Job::run`]; `AVX512` only where the CPU has it.
#[inline(always)]
unsafe fn attend<const AVX512: bool>(job: &Job<'_>, row: Row, kv_head: usize, s: &mut Scratch) {
    let h = job.heads;
    let (dim, group, width) = (h.head_dim, h.group(), h.qkv_width());
    let half = dim / 2;
    let slot_at = (row.slot * h.kv_heads + kv_head) * job.capacity * dim;
    let total = row.past + row.count;
    // SAFETY: `Job::new` checked that the slot's positions up to `total` lie inside the
    // buffers; no other task writes this slot and KV head, or reads it.
    let (keys, values) = unsafe {
        (
            std::slice::from_raw_parts_mut(job.key.add(slot_at), total * dim),
            std::slice::from_raw_parts_mut(job.value.add(slot_at), total * dim),
        )
    };
    let token = |j: usize| &job.qkv[(row.start + j) * width..(row.start + j + 1) * width];
    let rotary = |position: usize| {
        (
            &job.cos[position * half..(position + 1) * half],
            &job.sin[position * half..(position + 1) * half],
        )
    };
    for j in 0..row.count {
        let position = row.past + j;
        let (k, v) = (
            (h.heads + kv_head) * dim,
            (h.heads + h.kv_heads + kv_head) * dim,
        );
        let (cos, sin) = rotary(position);
        rotate(
            &token(j)[k..k + dim],
            cos,
            sin,
            1.0,
            &mut keys[position * dim..(position + 1) * dim],
        );
        values[position * dim..(position + 1) * dim].copy_from_slice(&token(j)[v..v + dim]);
    }
    {
        let queries = row.count * group;
        s.queries.resize(queries * dim, 0.0);
        s.acc.clear();
        s.acc.resize(queries * dim, 0.0);
        s.max.clear();
        s.max.resize(queries, f32::NEG_INFINITY);
        s.sum.clear();
        s.sum.resize(queries, 0.0);
        s.scores.resize(KEY_BLOCK, 0.0);
        // Query i is token i / group, head kv_head * group + i % group.
        for i in 0..queries {
            let head = kv_head * group + i % group;
            let (cos, sin) = rotary(row.past + i / group);
            rotate(
                &token(i / group)[head * dim..(head + 1) * dim],
                cos,
                sin,
                h.scale,
                &mut s.queries[i * dim..(i + 1) * dim],
            );
        }
        for first in (0..total).step_by(KEY_BLOCK) {
            let last = (first + KEY_BLOCK).min(total);
            // Token j sees positions up to past + j: skip the queries that see none here.
            let from = first.saturating_sub(row.past) * group;
            for i in from..queries {
                let seen = last.min(row.past + i / group + 1) - first;
                let query = &s.queries[i * dim..(i + 1) * dim];
                let scores = &mut s.scores[..seen];
                let block = &keys[first * dim..(first + seen) * dim];
                #[cfg(target_arch = "x86_64")]
                if AVX512 && dim % LANES == 0 {
                    // SAFETY: the caller checked the CPU has AVX-512.
                    unsafe { avx512::scores(query, block, scores) };
                } else {
                    scores_portable(query, block, scores);
                }
                #[cfg(not(target_arch = "x86_64"))]
                scores_portable(query, block, scores);
                let block_max = max(scores);
                let max = s.max[i].max(block_max);
                let carried = exp_one(s.max[i] - max);
                #[cfg(target_arch = "x86_64")]
                let block_sum = if AVX512 {
                    // SAFETY: the caller checked the CPU has AVX-512.
                    unsafe { avx512::exp_minus(scores, max) }
                } else {
                    exp_minus_portable(scores, max)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let block_sum = exp_minus_portable(scores, max);
                s.sum[i] = s.sum[i] * carried + block_sum;
                s.max[i] = max;
                let acc = &mut s.acc[i * dim..(i + 1) * dim];
                if carried != 1.0 {
                    acc.iter_mut().for_each(|a| *a *= carried);
                }
                let block = &values[first * dim..(first + seen) * dim];
                #[cfg(target_arch = "x86_64")]
                if AVX512 && dim % LANES == 0 {
                    // SAFETY: the caller checked the CPU has AVX-512.
                    unsafe { avx512::accumulate(acc, scores, block) };
                } else {
                    accumulate_portable(acc, scores, block);
                }
                #[cfg(not(target_arch = "x86_64"))]
                accumulate_portable(acc, scores, block);
            }
        }
        for i in 0..queries {
            let head = kv_head * group + i % group;
            let at = ((row.start + i / group) * h.heads + head) * dim;
            let norm = 1.0 / s.sum[i];
            // SAFETY: `Job::new` checked the output holds every packed token's heads; this
            // task alone writes its row's tokens' heads of its group.
            let out = unsafe { std::slice::from_raw_parts_mut(job.out.add(at), dim) };
            for (o, &a) in out.iter_mut().zip(&s.acc[i * dim..(i + 1) * dim]) {
                *o = a * norm;
            }
        }
    }
}

/// Rotary embedding of one head (the halves rotated, as Llama's `rotate_half`), times
/// `scale`, into `out`.
#[inline(always)]
fn rotate(x: &[f32], cos: &[f32], sin: &[f32], scale: f32, out: &mut [f32]) {
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        o1[i] = (x1[i] * cos[i] - x2[i] * sin[i]) * scale;
        o2[i] = (x2[i] * cos[i] + x1[i] * sin[i]) * scale;
    }
}

/// Lanes of the vectorized loops: one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;

/// `scores[n] = query · keys[n]`, the keys one after another.
#[inline(always)]
fn scores_portable(query: &[f32], keys: &[f32], scores: &mut [f32]) {
    for (score, key) in scores.iter_mut().zip(keys.chunks_exact(query.len())) {
        *score = dot(query, key);
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (a_blocks, b_blocks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_blocks.zip(b_blocks) {
        for l in 0..LANES {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    tail + reduce(acc)
}

/// The sum of a register's lanes, halving (a tree the compiler keeps in registers).
#[inline(always)]
fn reduce(acc: [f32; LANES]) -> f32 {
    let mut half = [0.0f32; LANES / 2];
    for l in 0..LANES / 2 {
        half[l] = acc[l] + acc[l + LANES / 2];
    }
    let mut quarter = [0.0f32; LANES / 4];
    for l in 0..LANES / 4 {
        quarter[l] = half[l] + half[l + LANES / 4];
    }
    (quarter[0] + quarter[2]) + (quarter[1] + quarter[3])
}

#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let blocks = xs.chunks_exact(LANES);
    let tail = blocks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for block in blocks {
        for l in 0..LANES {
            lanes[l] = lanes[l].max(block[l]);
        }
    }
    lanes.into_iter().fold(tail, f32::max)
}

#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let blocks = xs.chunks_exact(LANES);
    let tail: f32 = blocks.remainder().iter().sum();
    for block in blocks {
        for l in 0..LANES {
            lanes[l] += block[l];
        }
    }
    tail + reduce(lanes)
}

#[cfg(target_arch = "x86_64")]
mod avx512;

/// `acc += Σ weights[n] · values[n]`, the values one after another.
#[inline(always)]
fn accumulate_portable(acc: &mut [f32], weights: &[f32], values: &[f32]) {
    for (&p, v) in weights.iter().zip(values.chunks_exact(acc.len())) {
        for (a, &x) in acc.iter_mut().zip(v) {
            *a = p.mul_add(x, *a);
        }
    }
}

/// `xs[n] = e^(xs[n] - max)`, returning their sum.
#[inline(always)]
fn exp_minus_portable(xs: &mut [f32], max: f32) -> f32 {
    let mut blocks = xs.chunks_exact_mut(LANES);
    for block in &mut blocks {
        for x in block.iter_mut() {
            *x = exp_one(*x - max);
        }
    }
    for x in blocks.into_remainder() {
        *x = exp_one(*x - max);
    }
    sum(xs)
}

/// ln 2 split so that n · LN2_HIGH is exact for |n| < 2^9 (`exp_one`).
const LN2_HIGH: f32 = 0.693_359_4;
const LN2_LOW: f32 = -2.121_944_4e-4;
/// e^r's Taylor coefficients, highest degree first (`exp_one`).
const EXP_TAYLOR: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// e^x for x ≤ 0 (scores minus their max), to within 3e-7 relative error: e^r · 2^n with
/// n = round(x log2 e), r = x - n ln 2 (in two parts, so r is exact to f32) and e^r by its
/// Taylor series to degree 7 (|r| ≤ ln 2 / 2). Branch-free, so the compiler vectorizes it,
/// unlike `f32::exp`.
#[inline(always)]
fn exp_one(x: f32) -> f32 {
    // Below this e^x is under f32's smallest normal: it rounds to 0.
    let x = x.max(-87.0);
    // Round to nearest by the 1.5 × 2^23 trick (valid for |t| < 2^22).
    const ROUND: f32 = 12_582_912.0;
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = n.mul_add(-LN2_LOW, n.mul_add(-LN2_HIGH, x));
    let mut p = EXP_TAYLOR[0];
    for &c in &EXP_TAYLOR[1..] {
        p = p.mul_add(r, c);
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (no dependency for a test's random floats).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        fn below(&mut self, n: usize) -> usize {
            ((self.next() + 1.0) / 2.0 * n as f32) as usize % n.max(1)
        }
        fn fill(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    fn tables(positions: usize, dim: usize) -> (Vec<f32>, Vec<f32>) {
        let half = dim / 2;
        let angle = |p: usize, i: usize| p as f64 / 10000f64.powf(2.0 * i as f64 / dim as f64);
        let table = |f: fn(f64) -> f64| {
            (0..positions)
                .flat_map(|p| (0..half).map(move |i| f(angle(p, i)) as f32))
                .collect()
        };
        (table(f64::cos), table(f64::sin))
    }

    /// The textbook attention in f64: every query head alone, the whole score row, then
    /// softmax; the keys and values of a slot's past as given, the new ones rotated.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        h: Heads,
        qkv: &[f32],
        rows: &[Row],
        cos: &[f32],
        sin: &[f32],
        key: &mut [f32],
        value: &mut [f32],
        capacity: usize,
    ) -> Vec<f32> {
        let (dim, width, half) = (h.head_dim, h.qkv_width(), h.head_dim / 2);
        let tokens = qkv.len() / width;
        let mut out = vec![0.0f32; tokens * h.heads * dim];
        let rope = |x: &[f32], pos: usize| -> Vec<f64> {
            (0..dim)
                .map(|d| {
                    let i = d % half;
                    let (c, s) = (cos[pos * half + i] as f64, sin[pos * half + i] as f64);
                    if d < half {
                        x[d] as f64 * c - x[d + half] as f64 * s
                    } else {
                        x[d] as f64 * c + x[d - half] as f64 * s
                    }
                })
                .collect()
        };
        let at = |slot: usize, kvh: usize, pos: usize| {
            ((slot * h.kv_heads + kvh) * capacity + pos) * dim
        };
        for r in rows {
            for j in 0..r.count {
                let t = &qkv[(r.start + j) * width..];
                for kvh in 0..h.kv_heads {
                    let k = rope(&t[(h.heads + kvh) * dim..], r.past + j);
                    let a = at(r.slot, kvh, r.past + j);
                    for d in 0..dim {
                        key[a + d] = k[d] as f32;
                        value[a + d] = t[(h.heads + h.kv_heads + kvh) * dim + d];
                    }
                }
            }
            for j in 0..r.count {
                let t = &qkv[(r.start + j) * width..];
                for head in 0..h.heads {
                    let kvh = head / (h.heads / h.kv_heads);
                    let q = rope(&t[head * dim..], r.past + j);
                    let seen = r.past + j + 1;
                    let scores: Vec<f64> = (0..seen)
                        .map(|p| {
                            let a = at(r.slot, kvh, p);
                            (0..dim).map(|d| q[d] * key[a + d] as f64).sum::<f64>() * h.scale as f64
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for d in 0..dim {
                        let v: f64 = (0..seen)
                            .map(|p| weights[p] * value[at(r.slot, kvh, p) + d] as f64)
                            .sum();
                        out[((r.start + j) * h.heads + head) * dim + d] = (v / total) as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn exp_is_close_to_std_over_the_softmax_range() {
        for i in 0..=10_000 {
            let x = -90.0 * i as f32 / 10_000.0;
            let (ours, std) = (exp_one(x), x.exp());
            assert!(
                (ours - std).abs() <= 3e-7 * std + 1e-37,
                "exp({x}) = {ours}, std says {std}"
            );
        }
        assert_eq!(exp_one(0.0), 1.0);
    }

    #[test]
    fn vectorized_exp_matches_the_scalar_one() {
        // Lengths around the vector width, so the masked last register is covered.
        for len in [1, 15, 16, 17, 64] {
            let scores: Vec<f32> = (0..len).map(|i| -(i as f32) * 1.37 + 2.0).collect();
            let mut portable = scores.clone();
            let portable_sum = exp_minus_portable(&mut portable, 2.5);
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                let mut vectorized = scores.clone();
                // SAFETY: the CPU has AVX-512 (checked above).
                let sum = unsafe { avx512::exp_minus(&mut vectorized, 2.5) };
                for (v, p) in vectorized.iter().zip(&portable) {
                    assert!((v - p).abs() <= 1e-7 * p.abs(), "{v} against {p}");
                }
                assert!((sum - portable_sum).abs() <= 1e-6 * portable_sum);
            }
            let expected: f32 = scores.iter().map(|x| (x - 2.5).exp()).sum();
            assert!((portable_sum - expected).abs() <= 1e-6 * expected);
        }
    }

    #[test]
    fn matches_a_naive_attention_over_random_shapes() {
        let mut rng = Lcg(7);
        // (heads, kv heads, head_dim): TinyLlama's and SmolLM2's groups, plain multi-head,
        // head_dim 128, and a head_dim that is not a multiple of the vector width.
        let shapes = [(8, 2, 64), (9, 3, 64), (4, 4, 128), (6, 1, 128), (4, 2, 24)];
        for (case, &(heads, kv_heads, head_dim)) in shapes.iter().cycle().take(20).enumerate() {
            let h = Heads {
                heads,
                kv_heads,
                head_dim,
                scale: 1.0 / (head_dim as f32).sqrt(),
            };
            let (slots, capacity) = (4, 150);
            // Rows of one token (decoding) and chunks, over pasts from 0 to the capacity's
            // last position, in a random order of slots.
            let mut free: Vec<usize> = (0..slots).collect();
            let mut rows = Vec::new();
            let mut start = 0;
            for _ in 0..1 + rng.below(slots) {
                let slot = free.remove(rng.below(free.len()));
                let count = if rng.below(2) == 0 {
                    1
                } else {
                    1 + rng.below(70)
                };
                let past = match rng.below(4) {
                    0 => 0,
                    1 => capacity - count,
                    _ => rng.below(capacity - count + 1),
                };
                rows.push(Row {
                    slot,
                    past,
                    start,
                    count,
                });
                start += count;
            }
            let qkv = rng.fill(start * h.qkv_width());
            let (cos, sin) = tables(capacity, head_dim);
            let cache = slots * kv_heads * capacity * head_dim;
            let (key0, value0) = (rng.fill(cache), rng.fill(cache));
            let (mut key, mut value) = (key0.clone(), value0.clone());
            let mut out = vec![0.0; start * heads * head_dim];
            Job::new(
                h, &qkv, &rows, &cos, &sin, &mut key, &mut value, capacity, &mut out,
            )
            .unwrap()
            .run_all();
            let (mut want_key, mut want_value) = (key0, value0);
            let want = naive(
                h,
                &qkv,
                &rows,
                &cos,
                &sin,
                &mut want_key,
                &mut want_value,
                capacity,
            );
            let worst = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max)
            };
            let what = format!("case {case}: {h:?}, rows {rows:?}");
            assert!(
                worst(&out, &want) < 1e-5,
                "{what}: output off by {}",
                worst(&out, &want)
            );
            assert!(worst(&key, &want_key) < 1e-6, "{what}: keys");
            assert_eq!(value, want_value, "{what}: values");
        }
    }

    #[test]
    fn bad_passes_are_refused_with_a_reason() {
        let h = Heads {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            scale: 0.5,
        };
        let (slots, capacity) = (2, 6);
        let (cos, sin) = tables(capacity, 8);
        let try_rows = |rows: &[Row], tokens: usize| {
            let qkv = vec![0.0; tokens * h.qkv_width()];
            let (mut key, mut value) = (
                vec![0.0; slots * 2 * capacity * 8],
                vec![0.0; slots * 2 * capacity * 8],
            );
            let mut out = vec![0.0; tokens * 4 * 8];
            Job::new(
                h, &qkv, rows, &cos, &sin, &mut key, &mut value, capacity, &mut out,
            )
            .map(|_| ())
        };
        let row = |slot, past, start, count| Row {
            slot,
            past,
            start,
            count,
        };
        assert!(try_rows(&[row(0, 0, 0, 2), row(1, 3, 2, 1)], 3).is_ok());
        assert!(
            try_rows(&[row(1, 5, 0, 1)], 1).is_ok(),
            "the slot's last position"
        );
        for (rows, tokens, why) in [
            (vec![], 0, "empty pass"),
            (vec![row(0, 0, 0, 1)], 2, "cover 1 tokens of 2"),
            (vec![row(2, 0, 0, 1)], 1, "in slot 2, of 2"),
            (vec![row(0, 0, 0, 1), row(0, 1, 1, 1)], 2, "shares slot 0"),
            (vec![row(0, 5, 0, 2)], 2, "ends at position 7"),
            (vec![row(0, 0, 1, 1)], 1, "starts at token 1"),
            (vec![row(0, 0, 0, 0)], 1, "has no tokens"),
        ] {
            let err = try_rows(&rows, tokens).unwrap_err();
            assert!(err.contains(why), "{rows:?}: {err}");
        }
        let odd = Heads { heads: 3, ..h };
        assert!(odd.check().unwrap_err().contains("groups"));
    }
}
