"""TransformerLens-style hook points on a plain `nn.Module`.

A `HookPoint` is an identity module placed wherever an activation is worth reading or
editing; its name is its module path (`blocks.0.attn.hook_q`). `run_with_hooks` and
`run_with_cache` attach ordinary torch forward hooks for one call and always remove them,
so the model stays a plain module that nnsight and friends can wrap unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], torch.Tensor | None]


class HookPoint(nn.Module):
    """Identity; forward hooks on it may read or replace the activation."""

    def __init__(self):
        super().__init__()
        self.name: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def add_hook(self, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
        # fn(activation, hook) -> replacement or None, as in TransformerLens.
        return self.register_forward_hook(lambda _m, _inp, out: fn(out, self))


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

    @contextlib.contextmanager
    def hooks(
        self, fwd_hooks: Iterable[tuple[str | Callable[[str], bool], HookFn]] = ()
    ) -> Iterator:
        """Attach hooks for the duration of a `with` block; a name may be a predicate."""
        handles = []
        try:
            for name, fn in fwd_hooks:
                matches = (
                    [name] if isinstance(name, str) else [n for n in self.hook_dict if name(n)]
                )
                for n in matches:
                    if n not in self.hook_dict:
                        raise KeyError(f"no hook point named {n!r}; see model.hook_names()")
                    handles.append(self.hook_dict[n].add_hook(fn))
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(self, *args, fwd_hooks=(), **kwargs):
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(
        self, *args, names_filter: NamesFilter = None, detach: bool = True, **kwargs
    ):
        """Returns (output, cache) with cache[name] the activation at each matching hook."""
        cache: dict[str, torch.Tensor] = {}
        match = _name_matcher(names_filter)

        def save(x, hook):
            cache[hook.name] = x.detach() if detach else x

        with self.hooks([(n, save) for n in self.hook_dict if match(n)]):
            out = self(*args, **kwargs)
        return out, cache
