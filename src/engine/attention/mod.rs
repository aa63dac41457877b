//! Our own attention operator, `ai.trendstory.SlotAttention`: one node per layer attends every
//! row of a pass (decoding rows and prompt chunks alike) over the engine's slot KV cache.
//!
//! ONNX Runtime's CPU GroupQueryAttention attends each query head of each row alone and takes
//! several new tokens only for one row, so the packed graph needed one node for the decoding
//! rows, one per prefill lane and glue to put their outputs back in order (BENCHMARKS.md, "One
//! pass per step"). This operator takes the pass as it is packed, with a small descriptor per
//! row, and groups the query heads that share a KV head (see [`kernel`]).
//!
//! The node (exporter: `--attention slots`, SLOTS_CONTRACT in
//! `scripts/trendstory_tools/graph/slots_contract.py`):
//! - inputs: `qkv` f32 `[1, tokens, (heads + 2 kv_heads) * head_dim]` (before RoPE), `rows`
//!   i64 `[rows, 4]` (slot, past, start, count), `cos` and `sin` f32 `[positions, head_dim / 2]`,
//!   `key` and `value` f32 `[slots, kv_heads, capacity, head_dim]`;
//! - attributes: `num_heads`, `kv_num_heads`, `scale`;
//! - output: f32 `[1, tokens, heads * head_dim]`, in packed order.
//!
//! The new keys and values are written into `key` and `value` in place: they are the graph's
//! `past_key_values.*` inputs, bound by the engine to its [`super::SlotCache`], so a pass
//! copies nothing but the new positions. (Returning them for the engine to place would copy
//! each new position twice more and add two outputs per layer to bind.)

pub mod kernel;

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;
use ort::AsPointer;

use kernel::{Heads, Job, Row};

/// The operator domain of our graphs.
pub const DOMAIN: &str = "ai.trendstory";

/// The domain to register on a session, so graphs using our operator load.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(SlotAttention)
}

/// See the module doc.
pub struct SlotAttention;

impl Operator for SlotAttention {
    type Kernel<'attr> = SlotAttentionKernel;

    fn name(&self) -> &str {
        "SlotAttention"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        use TensorElementType::{Float32, Int64};
        [Float32, Int64, Float32, Float32, Float32, Float32].map(OperatorInput::required)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    /// Reads and checks the attributes once, when the session loads: a node the kernel
    /// cannot take fails the load with its name, never a run.
    fn create_kernel<'attr>(
        &self,
        info: &KernelContext<'attr>,
    ) -> ort::Result<Self::Kernel<'attr>> {
        let node = info.node_name().unwrap_or_default();
        let int = |name: &str| -> ort::Result<usize> {
            info.get::<i64>(name)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| {
                    ort::Error::new(format!(
                        "SlotAttention {node}: attribute {name} is missing or negative"
                    ))
                })
        };
        let scale = info.get::<f32>("scale").ok_or_else(|| {
            ort::Error::new(format!("SlotAttention {node}: attribute scale is missing"))
        })?;
        let heads = int("num_heads")?;
        let kv_heads = int("kv_num_heads")?;
        Heads::check_attributes(heads, kv_heads, scale)
            .map_err(|why| ort::Error::new(format!("SlotAttention {node}: {why}")))?;
        Ok(SlotAttentionKernel {
            heads,
            kv_heads,
            scale,
        })
    }
}

/// A node's attributes; head_dim comes from the KV buffers at each run.
pub struct SlotAttentionKernel {
    heads: usize,
    kv_heads: usize,
    scale: f32,
}

impl Kernel for SlotAttentionKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = |i: usize| {
            ctx.input(i)?
                .ok_or_else(|| ort::Error::new(format!("SlotAttention: input {i} is missing")))
        };
        let (qkv, rows, cos, sin) = (input(0)?, input(1)?, input(2)?, input(3)?);
        let (key, value) = (input(4)?, input(5)?);
        let (qkv_shape, qkv) = qkv.try_extract_tensor::<f32>()?;
        let (rows_shape, rows) = rows.try_extract_tensor::<i64>()?;
        let (_, cos) = cos.try_extract_tensor::<f32>()?;
        let (_, sin) = sin.try_extract_tensor::<f32>()?;
        let bad = |why: String| ort::Error::new(format!("SlotAttention: {why}"));
        let shape_of = |v: &ort::value::ValueRef<'_>| -> ort::Result<Vec<i64>> {
            v.try_extract_tensor::<f32>()
                .map(|(shape, _)| shape.to_vec())
        };
        let (kv_shape, value_shape) = (shape_of(&key)?, shape_of(&value)?);
        if kv_shape.len() != 4 || value_shape != kv_shape || kv_shape[1] != self.kv_heads as i64 {
            return Err(bad(format!(
                "KV buffers {kv_shape:?} and {value_shape:?} are not [slots, {}, capacity, head_dim]",
                self.kv_heads
            )));
        }
        let (capacity, head_dim) = (kv_shape[2] as usize, kv_shape[3] as usize);
        if rows_shape.len() != 2 || rows_shape[1] != 4 || qkv_shape.len() != 3 {
            return Err(bad(format!(
                "rows {rows_shape:?} is not [rows, 4] or q|k|v {qkv_shape:?} is not [1, tokens, width]"
            )));
        }
        let rows = rows
            .chunks_exact(4)
            .map(|r| {
                let field = |x: i64| {
                    usize::try_from(x).map_err(|_| bad(format!("row {r:?} has a negative field")))
                };
                Ok(Row {
                    slot: field(r[0])?,
                    past: field(r[1])?,
                    start: field(r[2])?,
                    count: field(r[3])?,
                })
            })
            .collect::<ort::Result<Vec<_>>>()?;
        let heads = Heads {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim,
            scale: self.scale,
        };
        let tokens = qkv.len() / heads.qkv_width().max(1);
        let kv_len = kv_shape.iter().product::<i64>() as usize;
        // SAFETY: ONNX Runtime hands the node the buffers of its inputs for the length of
        // this call. The KV inputs are the engine's slot cache, bound to this graph for the
        // pass and read or written by nothing else while it runs (this node alone takes
        // them), so writing the rows' new positions through them races with nothing.
        let (key, value) = unsafe {
            (
                mutable_floats(&key, kv_len)?,
                mutable_floats(&value, kv_len)?,
            )
        };
        let mut out = ctx
            .output(0, [1, tokens, self.heads * head_dim])?
            .ok_or_else(|| bad("no output".into()))?;
        let (_, out) = out.try_extract_tensor_mut::<f32>()?;
        let job = Job::new(heads, qkv, &rows, cos, sin, key, value, capacity, out).map_err(bad)?;
        let tasks = job.tasks();
        // SAFETY: ONNX Runtime's ParallelFor calls each index of 0..tasks exactly once.
        ctx.par_for(tasks, 0, |task| unsafe { job.run(task) })
    }
}

/// The data of a float tensor input, writable.
///
/// # Safety
/// Nothing else may read or write the tensor's data while the slice lives.
// The data is ONNX Runtime's buffer, not the handle's: the handle is only how to reach it.
#[allow(clippy::mut_from_ref)]
unsafe fn mutable_floats<'v>(
    value: &'v ort::value::ValueRef<'_>,
    len: usize,
) -> ort::Result<&'v mut [f32]> {
    let mut data: *mut std::ffi::c_void = std::ptr::null_mut();
    // SAFETY: `value` is a live tensor; the API only writes its data pointer into `data`.
    let status = unsafe { (ort::api().GetTensorMutableData)(value.ptr().cast_mut(), &mut data) };
    // SAFETY: the status comes straight from the call above.
    unsafe { ort::Error::result_from_status(status) }?;
    if data.is_null() && len > 0 {
        return Err(ort::Error::new("SlotAttention: a KV buffer has no data"));
    }
    // SAFETY: the caller checked the tensor is f32 of `len` elements (its shape) and vouches
    // that nothing else touches it.
    Ok(unsafe { std::slice::from_raw_parts_mut(data.cast::<f32>(), len) })
}
