"""One naming for the places in a decoder where representations are read, across architectures.

    embed       input to block 0 (token + position embeddings, scaled where the model scales them)
    I.attn      residual stream right after block I's attention sub-layer (the paper's h_att)
    I.ffn       block I's output, after its feed-forward sub-layer (h_ffn; also written ``I``)
    final       output of the final norm (what HF calls the last hidden state): the body's output

``I`` counts from 0 and may be negative (``-1.attn`` is the last block's attention output).
Sites are read with forward hooks; reading stops at the deepest requested site when nothing
after it (like the LM head) is needed.

``embed``, ``I.ffn`` and ``final`` are the input/output of modules every decoder has. ``I.attn``
depends on how a block is wired, so it is read only for architectures (``config.model_type``)
whose wiring is known (``attn_rule``): the input of the norm in front of the MLP (sequential
pre-norm blocks), block input + attention output (parallel blocks), or block input + the
attention post-norm's output (OLMo-2-style post-norm blocks). Any other architecture is refused
for ``I.attn`` with a message naming the sites that work - never a tensor that merely looks right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import RepdispError

# How h_att is read, by config.model_type (checked against each model's decoder-layer forward):
#   ("norm_input", NORM): input of the pre-MLP norm NORM = residual + attention output
#   ("parallel", ATTN):   block input + output of the attention module ATTN
#   ("post_norm", NORM):  block input + output of NORM, the attention post-norm
_SEQUENTIAL = (
    "llama", "mistral", "ministral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
    "phi3", "granite", "granitemoe", "starcoder2", "olmo", "olmoe", "gemma", "smollm3",
    "seed_oss", "arcee", "gpt_oss", "deepseek_v3", "hunyuan_v1_dense",
)  # fmt: skip
_ATTN_RULES: dict[str, tuple[str, str]] = {
    **{t: ("norm_input", "post_attention_layernorm") for t in _SEQUENTIAL},
    **{t: ("norm_input", "pre_feedforward_layernorm") for t in ("gemma2", "gemma3", "gemma3_text")},
    "glm4": ("norm_input", "post_attention_layernorm"),
    "gpt2": ("norm_input", "ln_2"),
    "gpt_bigcode": ("norm_input", "ln_2"),
    "phi": ("parallel", "self_attn"),
    "gptj": ("parallel", "attn"),
    "cohere": ("parallel", "self_attn"),
    "cohere2": ("parallel", "self_attn"),
    **{t: ("post_norm", "post_attention_layernorm") for t in ("olmo2", "olmo3", "exaone4")},
}


def attn_rule(config: Any) -> tuple[str, str] | None:
    """How ``I.attn`` is read for a model of this config, or None when repdisp does not know the
    wiring of its blocks (then ``I.attn`` is refused). Depends on the config only."""
    kind = getattr(config, "model_type", None)
    if kind == "gpt_neox":
        parallel = getattr(config, "use_parallel_residual", True)
        return ("parallel", "attention") if parallel else ("norm_input", "post_attention_layernorm")
    if kind == "stablelm":
        parallel = getattr(config, "use_parallel_residual", False)
        return ("parallel", "self_attn") if parallel else ("norm_input", "post_attention_layernorm")
    if kind == "falcon":
        parallel = getattr(config, "parallel_attn", True) or getattr(
            config, "new_decoder_architecture", False
        )
        return (
            ("parallel", "self_attention")
            if parallel
            else ("norm_input", "post_attention_layernorm")
        )
    return _ATTN_RULES.get(kind)


def check_sites(config: Any, sites: list[Site]) -> None:
    """Refuse sites that cannot be located exactly in this architecture (``I.attn`` of an
    architecture whose block wiring repdisp does not know), naming the sites that work."""
    attn = [s.name for s in sites if s.kind == "attn"]
    if attn and attn_rule(config) is None:
        kind = getattr(config, "model_type", None) or "unknown"
        raise RepdispError(
            f"site {attn[0]} cannot be located in a {kind!r} model: repdisp does not know where "
            "the residual stream after attention is in its blocks; sites that work: embed, "
            "I.ffn (block outputs), final"
        )


_SITE_RE = re.compile(r"^(-?\d+)(?:\.(attn|ffn|block))?$")


@dataclass(frozen=True, order=True)
class Site:
    """A resolved site; ``depth`` orders sites along the forward pass."""

    depth: int
    name: str

    @property
    def kind(self) -> str:
        return self.name if self.name in ("embed", "final") else self.name.split(".")[1]

    @property
    def block(self) -> int | None:
        return None if self.name in ("embed", "final") else int(self.name.split(".")[0])


def blocks_of(model: Any) -> Any:
    """The ModuleList of decoder blocks of a causal LM."""
    body = model.base_model
    for attr in ("layers", "h", "blocks"):
        if hasattr(body, attr):
            return getattr(body, attr)
    raise RepdispError(f"cannot find the decoder blocks of {type(model).__name__}")


def all_site_names(n_blocks: int) -> list[str]:
    names = ["embed"]
    for i in range(n_blocks):
        names += [f"{i}.attn", f"{i}.ffn"]
    return names + ["final"]


_TL_RE = re.compile(r"^blocks\.(-?\d+)\.hook_resid_(pre|mid|post)$")
_HS_RE = re.compile(r"^hs:(-?\d+)$")


def site_alias(spec: str, n_blocks: int) -> str:
    """Translate a TransformerLens hook name or an HF ``hidden_states`` index to a repdisp name.

    ``blocks.I.hook_resid_mid`` -> ``I.attn``; ``blocks.I.hook_resid_post`` -> ``I.ffn``;
    ``blocks.0.hook_resid_pre``/``hook_embed`` -> ``embed``, ``blocks.I.hook_resid_pre`` ->
    ``(I-1).ffn``; ``ln_final.hook_normalized`` -> ``final``. ``hs:K`` is HF's
    ``hidden_states[K]`` (K may be negative): ``hs:0`` = embed, ``hs:K`` = ``(K-1).ffn`` for
    0 < K < n_blocks, ``hs:n_blocks`` = final (HF applies the final norm to the last entry).
    Other names are returned unchanged. (TransformerLens folds norm weights and centres
    weights by default, so its activations differ from these by those transforms.)"""
    spec = spec.strip()
    if spec in ("hook_embed", "ln_final.hook_normalized"):
        return "embed" if spec == "hook_embed" else "final"
    m = _TL_RE.match(spec)
    if m:
        i, kind = int(m.group(1)), m.group(2)
        i = i + n_blocks if i < 0 else i
        if kind == "mid":
            return f"{i}.attn"
        if kind == "post":
            return f"{i}.ffn"
        return "embed" if i == 0 else f"{i - 1}.ffn"
    m = _HS_RE.match(spec)
    if m:
        k = int(m.group(1))
        k = k + n_blocks + 1 if k < 0 else k
        if not 0 <= k <= n_blocks:
            raise RepdispError(f"{spec}: hidden_states has indices 0..{n_blocks} for this model")
        return "embed" if k == 0 else "final" if k == n_blocks else f"{k - 1}.ffn"
    return spec


def site_names(name: str, n_blocks: int) -> tuple[str, str, int | None]:
    """(repdisp name, TransformerLens hook name, HF hidden_states index or None) of a site."""
    if name == "embed":
        return name, "blocks.0.hook_resid_pre", 0
    if name == "final":
        return name, "ln_final.hook_normalized", n_blocks
    i, kind = name.split(".")
    if kind == "attn":
        return name, f"blocks.{i}.hook_resid_mid", None
    return name, f"blocks.{i}.hook_resid_post", int(i) + 1 if int(i) + 1 < n_blocks else None


def parse_site(spec: str, n_blocks: int) -> Site:
    """Resolve a site name (negative indices allowed; TransformerLens and ``hs:K`` aliases) to
    its canonical form and depth."""
    spec = site_alias(spec, n_blocks)
    if spec == "embed":
        return Site(0, "embed")
    if spec == "final":
        return Site(2 * n_blocks + 1, "final")
    m = _SITE_RE.match(spec)
    if m:
        i = int(m.group(1))
        i = i + n_blocks if i < 0 else i
        if 0 <= i < n_blocks:
            kind = "attn" if m.group(2) == "attn" else "ffn"
            return Site(2 * i + (1 if kind == "attn" else 2), f"{i}.{kind}")
    raise RepdispError(
        f"unknown site {spec!r}; valid: embed, 0.attn, 0.ffn, ..., {n_blocks - 1}.attn, "
        f"{n_blocks - 1}.ffn, final (block index may be negative; 'all' = every block output)"
    )


def parse_sites(specs: str | list[str], n_blocks: int) -> list[Site]:
    """Parse a comma list or list of sites; ``all`` = every block output, ``all.attn`` = every h_att,
    ``everything`` = every site. Returns unique sites in forward order."""
    items = specs.split(",") if isinstance(specs, str) else [s for x in specs for s in x.split(",")]
    names: list[str] = []
    for item in (s.strip() for s in items if s.strip()):
        if item == "all":
            names += [f"{i}.ffn" for i in range(n_blocks)]
        elif item == "all.attn":
            names += [f"{i}.attn" for i in range(n_blocks)]
        elif item == "everything":
            names += all_site_names(n_blocks)
        else:
            names.append(item)
    if not names:
        raise RepdispError("no site given")
    return sorted({parse_site(n, n_blocks) for n in names})


class StopForward(Exception):
    """Raised inside a hook once the deepest needed site has been read."""


def _first(output: Any) -> Any:
    """The hidden states in a module's output: a tensor, or the first item of a tuple or of a
    ``ModelOutput`` (``last_hidden_state``)."""
    return output if hasattr(output, "shape") else output[0]


class SiteReader:
    """Context manager that records the hidden states of ``sites`` during a forward of the body.

    After a forward, ``self.values[name]`` holds a (batch, seq, d) tensor per site. When
    ``stop_early`` is set, the forward is aborted (``StopForward``) right after the deepest site.
    """

    def __init__(self, model: Any, sites: list[Site], stop_early: bool):
        self.model, self.sites = model, sites
        self.stop_at = max(sites).name if stop_early else None
        self.values: dict[str, Any] = {}
        self._handles: list[Any] = []

    def _store(self, name: str, tensor: Any) -> None:
        self.values[name] = tensor
        if name == self.stop_at:
            raise StopForward

    def __enter__(self) -> SiteReader:
        check_sites(self.model.config, self.sites)
        blocks = blocks_of(self.model)
        for site in self.sites:
            if site.name == "embed":
                self._on_input(blocks[0], site.name)
            elif site.name == "final":
                self._on_output(self.model.base_model, site.name)
            elif site.kind == "ffn":
                self._on_output(blocks[site.block], site.name)
            elif site.kind == "attn":
                self._hook_attn(blocks[site.block], site.name)
        return self

    def _on_input(self, module: Any, name: str) -> None:
        def hook(mod: Any, args: Any, kwargs: Any) -> None:
            self._store(name, args[0] if args else kwargs["hidden_states"])

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _on_output(self, module: Any, name: str) -> None:
        def hook(mod: Any, args: Any, output: Any) -> None:
            self._store(name, _first(output))

        self._handles.append(module.register_forward_hook(hook))

    def _hook_attn(self, block: Any, name: str) -> None:
        how, attr = attn_rule(self.model.config) or ("", "")
        module = getattr(block, attr, None)
        if module is None:
            raise RepdispError(
                f"cannot find {attr!r} in {type(block).__name__} to read {name}; sites that "
                "work: embed, I.ffn (block outputs), final"
            )
        if how == "norm_input":
            self._on_input(module, name)
            return
        # parallel: h_att = block input + attention output (Phi, GPT-J, Pythia, Cohere);
        # post_norm: h_att = block input + attention post-norm output (OLMo-2).
        block_input = f"_{name}.input"
        self._on_input(block, block_input)

        def hook(mod: Any, args: Any, output: Any) -> None:
            self._store(name, self.values.pop(block_input) + _first(output))

        self._handles.append(module.register_forward_hook(hook))

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
