"""What a graph contract (--attention) decides for the decoder graph: the inputs a step feeds,
the KV cache's shape and the outputs besides the logits, and the attention nodes of each
layer. One subclass per contract: explicit_contract.py (the optimum one), packed_contract.py
(fused GroupQueryAttention), slots_contract.py (the engine's own SlotAttention)."""
from __future__ import annotations

from trendstory_tools.graph.builder import GraphBuilder


class AttentionContract:
    """A contract over a builder `g`, the model's dimensions `dm` (llama_checkpoint.model_dims)
    and the RoPE tables' initializer names `rope` (cos, sin). Subclasses create their shared
    constants when constructed (the decoder does so at a fixed point of the graph)."""
    #: (domain, version) opsets beyond ONNX's and com.microsoft's.
    extra_opsets: tuple = ()
    #: Whether the step names the positions whose logits it needs (input logits_index): the
    #: output head then runs on those only; otherwise on every position.
    logits_index: bool = True

    def __init__(self, g: GraphBuilder, dm: dict, rope: tuple[str, str]):
        self.g, self.dm, self.rope = g, dm, rope

    def kv_shape(self, batch, length) -> list:
        """A KV cache tensor's shape: [batch, kv_heads, length, head_dim]."""
        return [batch, self.dm["kv_heads"], length, self.dm["head_dim"]]

    def inputs(self) -> list:
        """The step's inputs other than the KV caches, in graph order."""
        raise NotImplementedError

    def logits_shape(self) -> list:
        """The logits output's shape: one pass's logit positions by default."""
        return [1, "logit_positions", self.dm["vocab"]]

    def past_shape(self) -> list:
        """The shape of input past_key_values.{i}.{key,value}."""
        raise NotImplementedError

    def layer_values(self, i: int, kv: str) -> tuple[list, list, list]:
        """For layer i's key or value cache: (its present outputs, further inputs, further
        outputs); the further ones follow every layer's past and present in the graph."""
        return [], [], []

    def attend(self, qkv: str, i: int, pk: str, pv: str) -> str:
        """Layer i's attention on its fused q|k|v projection (q, k, v rows in that order) over
        the caches pk, pv: returns the context, heads merged, for o_proj."""
        raise NotImplementedError
