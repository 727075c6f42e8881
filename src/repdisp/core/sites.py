"""One naming for the places in a decoder where representations are read, across architectures.

    tok_embed   token embedding alone (as scaled by the model), without position embeddings
    pos_embed   learned position embedding (only models that add one, e.g. GPT-2)
    embed       input to block 0 (token + position embeddings, scaled where the model scales them)
    I.attn_out  what block I's attention sub-layer adds to the residual stream
    I.attn      residual stream right after block I's attention sub-layer (the paper's h_att)
    I.mlp_out   what block I's MLP sub-layer adds to the residual stream
    I.ffn       block I's output, after its feed-forward sub-layer (h_ffn; also written ``I``)
    final_normalized  final-norm input normalized, before the norm's gain and bias
    final       output of the final norm (what HF calls the last hidden state): the body's output

``I`` counts from 0 and may be negative (``-1.attn`` is the last block's attention output).
TransformerLens hook names and ``hs:K`` are accepted as aliases (``core.site_aliases``); a
parsed ``Site`` keeps the name the user wrote in ``requested``. Sites are parsed once, at the
edge, into ``Site`` objects that everything downstream passes along. Sites are read with forward
hooks; reading stops once every requested site has been read when nothing after it (like the LM
head) is needed.

``embed``, ``I.ffn`` and ``final`` are the input/output of modules every decoder has. ``I.attn``
depends on how a block is wired, so it is read only for architectures (``config.model_type``)
whose wiring is known (``attn_rule``): the input of the norm in front of the MLP (sequential
pre-norm blocks), block input + attention output (parallel blocks), or block input + the
attention post-norm's output (OLMo-2-style post-norm blocks). ``tok_embed``/``pos_embed`` and
``I.attn_out``/``I.mlp_out`` likewise need ``site_aliases.embed_rule``/``branch_rule``. Any
other architecture is refused for those sites with a message naming the sites that work - never
a tensor that merely looks right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import RepdispError
from .site_aliases import branch_rule, embed_rule, is_resid_mid, normalized, site_alias, site_names

__all__ = ["Site", "SiteReader", "StopForward", "attn_rule", "check_sites", "parse_site"]
__all__ += ["parse_sites", "all_site_names", "blocks_of", "site_alias", "site_names"]

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


_WORKS = "sites that work: embed, I.ffn (block outputs), final"


def check_sites(config: Any, sites: list[Site]) -> None:
    """Refuse sites that cannot be located exactly in this architecture, naming the sites that
    work: ``I.attn`` of an architecture whose block wiring repdisp does not know (or asked as
    ``hook_resid_mid`` of a parallel block, which TransformerLens does not have),
    ``tok_embed``/``pos_embed``/``I.attn_out``/``I.mlp_out`` outside their tables."""
    kind = getattr(config, "model_type", None) or "unknown"
    rule = attn_rule(config)
    for s in sites:
        if s.kind == "attn" and rule is None:
            raise RepdispError(
                f"site {s.label} cannot be located in a {kind!r} model: repdisp does not know "
                f"where the residual stream after attention is in its blocks; {_WORKS}"
            )
        if s.kind == "attn" and rule[0] == "parallel" and is_resid_mid(s.requested):
            raise RepdispError(
                f"site {s.requested}: a {kind!r} model has parallel blocks (attention and MLP "
                "read the same input), where TransformerLens has no hook_resid_mid; repdisp's "
                f"{s.name} (block input + attention output) is the paper's h_att"
            )
        if s.kind in ("tok_embed", "pos_embed"):
            emb = embed_rule(config)
            if emb is None:
                raise RepdispError(
                    f"site {s.label} cannot be located in a {kind!r} model: repdisp does not "
                    f"know how its embeddings are built; {_WORKS}"
                )
            if s.kind == "pos_embed" and not emb[0]:
                raise RepdispError(
                    f"site {s.label}: a {kind!r} model has no position-embedding vector (its "
                    "positions act inside attention: rotary or ALiBi); tok_embed = embed there"
                )
        if s.kind in ("attn_out", "mlp_out") and branch_rule(config) is None:
            raise RepdispError(
                f"site {s.label} cannot be located in a {kind!r} model: repdisp does not know "
                f"which module's output its blocks add to the residual stream; {_WORKS}"
            )


_SITE_RE = re.compile(r"^(-?\d+)(?:\.(attn_out|mlp_out|attn|ffn|block))?$")
_TOP = {"tok_embed": -0.6, "pos_embed": -0.3, "embed": 0}  # depths; final_normalized: 2n + 0.5
_BLOCK_DEPTH = {"attn_out": 0.5, "attn": 1, "mlp_out": 1.5, "ffn": 2}  # + 2 I


@dataclass(frozen=True, order=True)
class Site:
    """A resolved site; ``depth`` orders sites along the forward pass. ``requested`` is the name
    the user wrote (an alias such as ``blocks.5.hook_resid_post``), "" when it was this name;
    it does not take part in equality, so aliases of one site collapse."""

    depth: float
    name: str
    requested: str = field(default="", compare=False)

    @property
    def kind(self) -> str:
        return self.name if "." not in self.name else self.name.split(".")[1]

    @property
    def block(self) -> int | None:
        return None if "." not in self.name else int(self.name.split(".")[0])

    @property
    def label(self) -> str:
        """The name as asked, with the canonical one when they differ: ``hook_embed (tok_embed)``."""
        return f"{self.requested} ({self.name})" if self.requested else self.name


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


def final_site(n_blocks: int) -> Site:
    """The ``final`` site of a model with ``n_blocks`` blocks (the deepest site)."""
    return Site(2 * n_blocks + 1, "final")


def parse_site(spec: str, n_blocks: int) -> Site:
    """Resolve a site name (negative indices allowed; TransformerLens and ``hs:K`` aliases) to
    its canonical form and depth."""
    asked = spec.strip()
    spec = site_alias(asked, n_blocks)
    site = None
    if spec in _TOP:
        site = Site(_TOP[spec], spec)
    elif spec == "final_normalized":
        site = Site(2 * n_blocks + 0.5, spec)
    elif spec == "final":
        site = final_site(n_blocks)
    m = _SITE_RE.match(spec)
    if m:
        i = int(m.group(1))
        i = i + n_blocks if i < 0 else i
        if 0 <= i < n_blocks:
            kind = m.group(2) if m.group(2) in _BLOCK_DEPTH else "ffn"
            site = Site(2 * i + _BLOCK_DEPTH[kind], f"{i}.{kind}")
    if site is None:
        raise RepdispError(
            f"unknown site {spec!r}; valid: embed, 0.attn, 0.ffn, ..., {n_blocks - 1}.attn, "
            f"{n_blocks - 1}.ffn, final (block index may be negative; 'all' = every block "
            "output; also tok_embed, pos_embed, I.attn_out, I.mlp_out, final_normalized and "
            "TransformerLens hook names)"
        )
    return site if asked == site.name else Site(site.depth, site.name, asked)


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
    unique: dict[Site, Site] = {}
    for n in names:  # the first spelling of a site is the one kept as ``requested``
        site = parse_site(n, n_blocks)
        unique.setdefault(site, site)
    return sorted(unique)


class StopForward(Exception):
    """Raised inside a hook once the deepest needed site has been read."""


def _first(output: Any) -> Any:
    """The hidden states in a module's output: a tensor, or the first item of a tuple or of a
    ``ModelOutput`` (``last_hidden_state``)."""
    return output if hasattr(output, "shape") else output[0]


def final_norm(model: Any) -> Any:
    """The final norm module of a causal LM's body."""
    body = model.base_model
    for attr in ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f"):
        if getattr(body, attr, None) is not None:
            return getattr(body, attr)
    raise RepdispError(f"cannot find the final norm of {type(model).__name__}; {_WORKS}")


class SiteReader:
    """Context manager that records the hidden states of ``sites`` during a forward of the body.

    After a forward, ``self.values[name]`` holds a (batch, seq, d) tensor per site. When
    ``stop_early`` is set, the forward is aborted (``StopForward``) once every site is read.
    """

    def __init__(self, model: Any, sites: list[Site], stop_early: bool):
        self.model, self.sites = model, sites
        self._need = {s.name for s in sites} if stop_early else None
        self.values: dict[str, Any] = {}
        self._handles: list[Any] = []
        self._batch = 1

    def _store(self, name: str, tensor: Any) -> None:
        self.values[name] = tensor
        if self._need is not None and self._need <= self.values.keys():
            raise StopForward

    def __enter__(self) -> SiteReader:
        check_sites(self.model.config, self.sites)
        blocks = blocks_of(self.model)
        for site in self.sites:
            if site.name == "embed" or (site.kind == "tok_embed" and not self._pos_table()):
                self._on_input(blocks[0], site.name)
            elif site.kind in ("tok_embed", "pos_embed"):
                self._hook_embedding(site)
            elif site.name == "final":
                self._on_output(self.model.base_model, site.name)
            elif site.name == "final_normalized":
                norm = final_norm(self.model)
                self._on_input(norm, site.name, lambda x, norm=norm: normalized(x, norm))
            elif site.kind == "ffn":
                self._on_output(blocks[site.block], site.name)
            elif site.kind == "attn":
                self._hook_attn(blocks[site.block], site.name)
            else:  # attn_out, mlp_out
                attrs = branch_rule(self.model.config) or ("", "")
                attr = attrs[0] if site.kind == "attn_out" else attrs[1]
                self._on_output(self._module(blocks[site.block], attr, site.name), site.name)
        return self

    def _pos_table(self) -> str:
        return (embed_rule(self.model.config) or ("", ""))[1]

    def _hook_embedding(self, site: Site) -> None:
        tok, pos = embed_rule(self.model.config) or ("", "")
        body = self.model.base_model
        if site.kind == "tok_embed":
            self._on_output(self._module(body, tok, site.name), site.name)
            return

        def batch(mod: Any, args: Any, kwargs: Any) -> None:  # positions come as (1, T)
            x = kwargs.get("input_ids")
            x = kwargs.get("inputs_embeds") if x is None else x
            self._batch = (args[0] if args else x).shape[0]

        self._handles.append(body.register_forward_pre_hook(batch, with_kwargs=True))

        def hook(mod: Any, args: Any, output: Any) -> None:
            self._store(site.name, output.expand(self._batch, *output.shape[1:]))

        self._handles.append(self._module(body, pos, site.name).register_forward_hook(hook))

    @staticmethod
    def _module(parent: Any, attr: str, name: str) -> Any:
        module = getattr(parent, attr, None) if attr else None
        if module is None:
            raise RepdispError(
                f"cannot find {attr!r} in {type(parent).__name__} to read {name}; {_WORKS}"
            )
        return module

    def _on_input(self, module: Any, name: str, transform: Any = None) -> None:
        def hook(mod: Any, args: Any, kwargs: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            self._store(name, transform(x) if transform else x)

        self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def _on_output(self, module: Any, name: str) -> None:
        def hook(mod: Any, args: Any, output: Any) -> None:
            self._store(name, _first(output))

        self._handles.append(module.register_forward_hook(hook))

    def _hook_attn(self, block: Any, name: str) -> None:
        how, attr = attn_rule(self.model.config) or ("", "")
        module = self._module(block, attr, name)
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
