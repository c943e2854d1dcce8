"""TransformerLens-style hook points on a plain `nn.Module`.

A `HookPoint` is an identity module placed wherever an activation is worth reading or
editing; its name is its module path (`blocks.0.attn.hook_q`). It keeps its own lists of
forward and backward hook functions, so the model stays a plain module (nnsight and friends
wrap it unchanged) and never reads torch's private hook registries:

    fwd hook  fn(activation, hook) -> replacement or None, applied in order in forward
    bwd hook  fn(grad, hook) -> replacement or None, on the gradient of that activation

`run_with_hooks(..., fwd_hooks=, bwd_hooks=)` attaches hooks for one call and always removes
them; `run_with_cache` returns the output and an `ActivationCache` (with `incl_bwd=True`
also every activation's gradient, as `NAME_grad`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]
HookSpec = Iterable[tuple[str | Callable[[str], bool], HookFn]]


class HookHandle:
    """Removes one hook function from its hook point (idempotent)."""

    def __init__(self, fns: list[HookFn], fn: HookFn):
        self.fns, self.fn = fns, fn

    def remove(self) -> None:
        if self.fn in self.fns:
            self.fns.remove(self.fn)


class HookPoint(nn.Module):
    """Identity; its forward hooks may read or replace the activation, its backward hooks
    the activation's gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.fwd_fns: list[HookFn] = []
        self.bwd_fns: list[HookFn] = []

    @property
    def has_hooks(self) -> bool:
        return bool(self.fwd_fns or self.bwd_fns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for fn in list(self.fwd_fns):
            out = fn(x, self)
            if out is not None:
                x = out
        if self.bwd_fns and x.requires_grad:
            for fn in list(self.bwd_fns):
                x.register_hook(lambda g, fn=fn: fn(g, self))
        return x

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> HookHandle:
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', not {dir!r}")
        fns = self.fwd_fns if dir == "fwd" else self.bwd_fns
        fns.append(fn)
        return HookHandle(fns, fn)


NamesFilter = None | str | Iterable[str] | Callable[[str], bool]


def _name_matcher(names_filter: NamesFilter) -> Callable[[str], bool]:
    if names_filter is None:
        return lambda _name: True
    if isinstance(names_filter, str):
        return lambda name: name == names_filter
    if callable(names_filter):
        return names_filter
    wanted = set(names_filter)
    return lambda name: name in wanted


# Short names, as TransformerLens's cache["q", 0] reads them -> the hook's path in a block.
_BLOCK_SITES = {
    "resid_pre": "hook_resid_pre",
    "attn_out": "hook_attn_out",
    "resid_mid": "hook_resid_mid",
    "mlp_out": "hook_mlp_out",
    "resid_post": "hook_resid_post",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "z": "attn.hook_z",
    "attn_scores": "attn.hook_attn_scores",
    "pattern": "attn.hook_pattern",
    "sink": "attn.hook_sink",
    "pre": "mlp.hook_pre",
    "post": "mlp.hook_post",
    "ln1": "ln1.hook_normalized",
    "ln2": "ln2.hook_normalized",
}


def act_name(name: str, layer: int | None = None) -> str:
    """A hook's full name from a short one: act_name("q", 0) -> "blocks.0.attn.hook_q";
    "embed" -> "hook_embed"; a full name is returned unchanged."""
    if name in _BLOCK_SITES:
        if layer is None:
            raise KeyError(f"{name!r} is a per-layer site: give a layer, e.g. ({name!r}, 0)")
        return f"blocks.{layer}.{_BLOCK_SITES[name]}"
    if name in ("embed", "pos_embed"):
        return f"hook_{name}"
    return name


class ActivationCache(Mapping[str, torch.Tensor]):
    """Activations by hook name (gradients as NAME_grad), with the conveniences a
    TransformerLens user reaches for: cache["q", 0], stack_activation, accumulated_resid."""

    def __init__(self, cache: dict[str, torch.Tensor], n_layer: int):
        self.cache, self.n_layer = cache, n_layer

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        name = act_name(*key) if isinstance(key, tuple) else act_name(key)
        if name not in self.cache:
            raise KeyError(f"{name!r} is not in the cache (was it filtered out?)")
        return self.cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache)

    def __len__(self) -> int:
        return len(self.cache)

    def stack_activation(self, name: str) -> torch.Tensor:
        """One per-layer site over every layer: [n_layer, ...] (e.g. "resid_post")."""
        return torch.stack([self[name, layer] for layer in range(self.n_layer)])

    def accumulated_resid(self) -> torch.Tensor:
        """The residual stream before each block and after the last: [n_layer + 1, ...]."""
        layers = [self["resid_pre", layer] for layer in range(self.n_layer)]
        return torch.stack(layers + [self["resid_post", self.n_layer - 1]])

    def remove_batch_dim(self) -> ActivationCache:
        """The cache of a batch of one, without its batch dimension."""
        if any(v.shape[0] != 1 for v in self.cache.values()):
            raise ValueError("remove_batch_dim needs a batch of size 1")
        return ActivationCache({k: v[0] for k, v in self.cache.items()}, self.n_layer)

    def to(self, device: torch.device | str) -> ActivationCache:
        return ActivationCache({k: v.to(device) for k, v in self.cache.items()}, self.n_layer)


class HookedModule(nn.Module):
    """Mixin: call `setup_hooks()` at the end of `__init__`."""

    def setup_hooks(self) -> None:
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def _matching(self, name: str | Callable[[str], bool]) -> list[str]:
        matches = [name] if isinstance(name, str) else [n for n in self.hook_dict if name(n)]
        for n in matches:
            if n not in self.hook_dict:
                raise KeyError(f"no hook point named {n!r}; see model.hook_names()")
        return matches

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: HookSpec = (), bwd_hooks: HookSpec = ()) -> Iterator:
        """Attach hooks for the duration of a `with` block; a name may be a predicate.
        Backward hooks fire when a backward pass runs inside the block."""
        handles = []
        try:
            for hooks, dir in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                for name, fn in hooks:
                    handles += [self.hook_dict[n].add_hook(fn, dir) for n in self._matching(name)]
            yield self
        finally:
            for h in handles:
                h.remove()

    def reset_hooks(self) -> None:
        """Remove every hook function from every hook point (e.g. after an interrupted
        `add_hook` outside a `hooks` block)."""
        for hp in self.hook_dict.values():
            hp.fwd_fns.clear()
            hp.bwd_fns.clear()

    @property
    def n_hooked_layers(self) -> int:
        """The number of blocks with hook points (`blocks.N.`)."""
        return len({n.split(".")[1] for n in self.hook_dict if n.startswith("blocks.")})

    def run_with_hooks(
        self,
        *args,
        fwd_hooks: HookSpec = (),
        bwd_hooks: HookSpec = (),
        backward_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs,
    ):
        """The model's output with the hooks attached for this call. Backward hooks fire
        in a backward pass inside the call: of `backward_of(output)` when given."""
        with self.hooks(fwd_hooks, bwd_hooks):
            out = self(*args, **kwargs)
            if backward_of is not None:
                backward_of(out).backward()
        return out

    def run_with_cache(
        self,
        *args,
        names_filter: NamesFilter = None,
        detach: bool = True,
        incl_bwd: bool = False,
        backward_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, ActivationCache]:
        """(output, cache): the activation at each matching hook. With `incl_bwd`, a
        backward pass of `backward_of(output)` (default: the output's sum) also caches
        each activation's gradient as NAME_grad."""
        cache: dict[str, torch.Tensor] = {}
        match = _name_matcher(names_filter)
        names = [n for n in self.hook_dict if match(n)]

        def save(x, hook):
            cache[hook.name] = x.detach() if detach else x

        def save_grad(g, hook):
            cache[f"{hook.name}_grad"] = g.detach()

        bwd = [(n, save_grad) for n in names] if incl_bwd else []
        with self.hooks([(n, save) for n in names], bwd):
            out = self(*args, **kwargs)
            if incl_bwd:
                (backward_of(out) if backward_of is not None else out.sum()).backward()
        return out, ActivationCache(cache, self.n_hooked_layers)
