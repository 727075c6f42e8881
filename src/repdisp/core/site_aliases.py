"""Other libraries' names for repdisp sites, and where the sub-layer sites are in each architecture.

TransformerLens hook names are translated to the repdisp site with the same meaning:

    hook_embed                 tok_embed      token embedding alone (scaled where the model scales
                                              it, e.g. Gemma's sqrt(d)), without position embeddings
    hook_pos_embed             pos_embed      learned position embedding (refused on models whose
                                              positions act inside attention: rotary, ALiBi)
    blocks.I.hook_resid_pre    embed / (I-1).ffn   input of block I
    blocks.I.hook_attn_out     I.attn_out     what attention adds to the residual stream
    blocks.I.hook_resid_mid    I.attn         residual after attention (refused on parallel blocks,
                                              where TransformerLens has no such hook)
    blocks.I.hook_mlp_out      I.mlp_out      what the MLP adds to the residual stream
    blocks.I.hook_resid_post   I.ffn          block output
    ln_final.hook_normalized   final_normalized   final-norm input normalized, before its gain and
                                              bias: (x - mean) / sqrt(var + eps) for LayerNorm,
                                              x / sqrt(mean(x²) + eps) for RMSNorm

``hs:K`` is HF's ``hidden_states[K]``: ``hs:0`` = embed, ``hs:K`` = ``(K-1).ffn`` for
0 < K < n_blocks, ``hs:n_blocks`` = final (HF applies the final norm to the last entry).

The values equal TransformerLens's for a model loaded without weight processing
(``HookedTransformer.from_pretrained_no_processing``); its default ``center_writing_weights``
and ``fold_ln`` change the weights, so its activations then differ by those transforms.

Architecture tables (by ``config.model_type``, checked against each model's decoder-layer code):
``embed_rule`` says whether the model adds a learned position embedding (and the attributes of
its token and position tables), ``branch_rule`` names the modules whose outputs are what the
attention and MLP sub-layers add to the residual stream. Architectures missing from a table are
refused for the sites that need it, never read at a tensor that merely looks right.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import RepdispError

# models whose positions act inside attention (rotary or ALiBi): the block-0 input is the token
# embedding (as scaled by the model)
_NO_POS = (
    "llama", "mistral", "ministral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
    "phi3", "granite", "granitemoe", "starcoder2", "olmo", "olmoe", "gemma", "smollm3",
    "seed_oss", "arcee", "gpt_oss", "deepseek_v3", "hunyuan_v1_dense", "gemma2", "gemma3",
    "gemma3_text", "glm4", "phi", "gptj", "cohere", "cohere2", "olmo2", "olmo3", "exaone4",
    "gpt_neox", "stablelm", "falcon",
)  # fmt: skip
_LEARNED_POS = {"gpt2": ("wte", "wpe"), "gpt_bigcode": ("wte", "wpe")}

# (module whose output attention adds to the residual, same for the MLP); granite scales the
# branches by residual_multiplier after these modules and falcon adds attention into the MLP
# output in place, so both are left out
_PLAIN = (
    "llama", "mistral", "ministral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
    "phi3", "starcoder2", "olmo", "olmoe", "gemma", "smollm3", "seed_oss", "arcee", "gpt_oss",
    "deepseek_v3", "hunyuan_v1_dense", "phi", "cohere", "cohere2", "stablelm",
)  # fmt: skip
_BRANCHES: dict[str, tuple[str, str]] = {
    **{t: ("self_attn", "mlp") for t in _PLAIN},
    **{
        t: ("post_attention_layernorm", "post_feedforward_layernorm")
        for t in ("gemma2", "gemma3", "gemma3_text", "olmo2", "olmo3", "exaone4")
    },
    "glm4": ("post_self_attn_layernorm", "post_mlp_layernorm"),
    "gpt2": ("attn", "mlp"),
    "gpt_bigcode": ("attn", "mlp"),
    "gptj": ("attn", "mlp"),
    "gpt_neox": ("attention", "mlp"),
}


def embed_rule(config: Any) -> tuple[str, str] | None:
    """The (token table, position table) attributes of the body for models with a learned
    position embedding, ("", "") for models with no position-embedding vector, None when
    unknown."""
    kind = getattr(config, "model_type", None)
    if kind in _LEARNED_POS:
        return _LEARNED_POS[kind]
    if kind in _NO_POS:
        return ("", "")
    return None


def branch_rule(config: Any) -> tuple[str, str] | None:
    """The block attributes whose outputs are the attention and MLP branches, or None."""
    return _BRANCHES.get(getattr(config, "model_type", None))


_TL_RE = re.compile(r"^blocks\.(-?\d+)\.hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out)$")
_HS_RE = re.compile(r"^hs:(-?\d+)$")
_TL_TOP = {
    "hook_embed": "tok_embed",
    "hook_pos_embed": "pos_embed",
    "ln_final.hook_normalized": "final_normalized",
}
_TL_BLOCK = {"resid_mid": "attn", "resid_post": "ffn", "attn_out": "attn_out", "mlp_out": "mlp_out"}


def site_alias(spec: str, n_blocks: int) -> str:
    """Translate a TransformerLens hook name or an HF ``hidden_states`` index to a repdisp name
    (table in the module docstring); other names are returned unchanged."""
    spec = spec.strip()
    if spec in _TL_TOP:
        return _TL_TOP[spec]
    m = _TL_RE.match(spec)
    if m:
        i, kind = int(m.group(1)), m.group(2)
        i = i + n_blocks if i < 0 else i
        if kind == "resid_pre":
            return "embed" if i == 0 else f"{i - 1}.ffn"
        return f"{i}.{_TL_BLOCK[kind]}"
    m = _HS_RE.match(spec)
    if m:
        k = int(m.group(1))
        k = k + n_blocks + 1 if k < 0 else k
        if not 0 <= k <= n_blocks:
            raise RepdispError(f"{spec}: hidden_states has indices 0..{n_blocks} for this model")
        return "embed" if k == 0 else "final" if k == n_blocks else f"{k - 1}.ffn"
    return spec


def site_names(name: str, n_blocks: int) -> tuple[str, str, int | None]:
    """(repdisp name, TransformerLens hook name or "", HF hidden_states index or None)."""
    top = {v: k for k, v in _TL_TOP.items()}
    if name in top:
        return name, top[name], None
    if name == "embed":
        return name, "blocks.0.hook_resid_pre", 0
    if name == "final":
        return name, "", n_blocks
    i, kind = name.split(".")
    hook = {v: k for k, v in _TL_BLOCK.items()}[kind]
    hs = int(i) + 1 if kind == "ffn" and int(i) + 1 < n_blocks else None
    return name, f"blocks.{i}.hook_{hook}", hs


def is_resid_mid(spec: str) -> bool:
    """True for TransformerLens's ``blocks.I.hook_resid_mid`` (absent in parallel blocks)."""
    m = _TL_RE.match(spec.strip())
    return bool(m) and m.group(2) == "resid_mid"


def normalized(x: Any, norm: Any) -> Any:
    """TransformerLens's ``hook_normalized`` of a norm module's input ``x``: float32
    (x - mean)/sqrt(var + eps) for ``nn.LayerNorm`` (centred), x/sqrt(mean(x²) + eps) for an
    RMSNorm (a class whose name ends in RMSNorm); refused for any other norm."""
    import torch

    name = type(norm).__name__
    eps = getattr(norm, "eps", None)
    if eps is None:
        eps = getattr(norm, "variance_epsilon", None)
    x = x.float()
    if isinstance(norm, torch.nn.LayerNorm):
        x = x - x.mean(-1, keepdim=True)
    elif not name.endswith("RMSNorm") or eps is None:
        raise RepdispError(
            f"final_normalized: the final norm is a {name}, which repdisp cannot normalize "
            "exactly; use final (the norm's output, with its gain)"
        )
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + float(eps))
