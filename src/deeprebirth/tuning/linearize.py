"""Gradual linearization: the activations a depth merge drops fade out during training.

Dropping an activation outright (``drop_activation``) leaves a network far from the one it
came from: MobileNetV2's stem without its ReLU6s is off by four orders of magnitude at the
next block. Instead, before the chains are merged, every activation the plan drops becomes

    y = act(x) + t * (x - act(x))

with ``t`` rising from 0 (the original network) to 1 (the activation gone) over the first
part of a whole-network distillation run against the original, and held at 1 for the
rest. The network then meets the merge already linear, and the merge composes convs that
were trained to work without the activation (as in Layer Folding, Dror et al. 2021, and
DepthShrinker, Fu et al. 2022, which also train before they merge).

An entry that ends its chain in an activation (``plan.end_activation``) gets that
activation faded *in* on the same schedule, ``y = x + t * (act(x) - x)``, after the chain's
output.

In inference mode a fading activation is the identity and a rising one is whole (``t = 1``):
what the validation probe measures is the network as it will be merged.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ..plan.plan import Plan, PlanError
from ..transforms.depth import activation_node, add_activation, chain_output

FADE_PREFIX = "linearize_fade"


class Fade(nn.Module):
    """``act(x) + t * (x - act(x))``: the activation's output fading into its input (called
    with the two swapped, an activation fading in).

    ``t`` is set by the trainer; in inference mode it is 1 (the activation gone)."""

    def __init__(self) -> None:
        super().__init__()
        self.t = 0.0

    def forward(self, x: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
        t = self.t if self.training else 1.0
        return activated + t * (x - activated)

    def extra_repr(self) -> str:
        return f"t={self.t:.3f}"


def insert_fades(gm: fx.GraphModule, plan: Plan, applied: list[str]) -> list[Fade]:
    """Put a ``Fade`` after each activation that an applied ``drop_activation`` entry of
    ``plan`` removes (``gm``: the network before those entries); returns the fades."""
    by_name = {n.name: n for n in gm.graph.nodes}
    modules = dict(gm.named_modules())
    fades = []
    for entry in plan.entries:
        if entry.kind != "drop_activation" or entry.id not in applied:
            continue
        acts = [
            by_name[n] for n in entry.nodes if n in by_name and activation_node(by_name[n], modules)
        ]
        if not acts:
            raise PlanError(
                f"plan entry {entry.id}: the model has none of the activations it drops; "
                "re-run `deeprebirth plan`"
            )
        for node in acts:
            _not_in_place(node, modules)
            fade, target = Fade(), f"{FADE_PREFIX}_{len(fades)}"
            gm.add_submodule(target, fade)
            with gm.graph.inserting_after(node):
                faded = gm.graph.call_module(target, (node.args[0], node))
            node.replace_all_uses_with(faded, delete_user_cb=lambda user, f=faded: user is not f)
            fades.append(fade)
        if (ending := chain_output(gm, entry)) is not None:
            out, like = ending
            fade, target = Fade(), f"{FADE_PREFIX}_{len(fades)}"
            gm.add_submodule(target, fade)
            act = add_activation(gm, like, out, f"{target}_activation")
            with gm.graph.inserting_after(act):
                rising = gm.graph.call_module(target, (act, out))
            out.replace_all_uses_with(rising, delete_user_cb=lambda u, k=(act, rising): u not in k)
            fades.append(fade)
    gm.graph.lint()
    gm.recompile()
    return fades


def _not_in_place(node: fx.Node, modules: dict[str, nn.Module]) -> None:
    """Make an activation write a new tensor: a fade reads the activation's input too
    (torchvision's ReLU6(inplace=True) would leave it ``act(x)`` both times)."""
    if node.op == "call_module":
        module = modules[node.target]
        if getattr(module, "inplace", False):
            module.inplace = False
        return
    if node.kwargs.get("inplace"):
        node.kwargs = {**node.kwargs, "inplace": False}
    if len(node.args) > 1 and node.args[-1] is True:  # F.relu(x, True)
        node.args = (*node.args[:-1], False)


def remove_fades(gm: fx.GraphModule) -> None:
    """Undo ``insert_fades``: each activation feeds its users again, and an activation
    fading in goes (the merge puts it back after the merged conv)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), Fade):
            rising = node.args[0]
            node.replace_all_uses_with(node.args[1])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
            if not rising.users:  # the activation only the fade read
                gm.graph.erase_node(rising)
                if rising.op == "call_module":
                    gm.delete_submodule(rising.target)
    gm.graph.lint()
    gm.recompile()


def set_fade(fades: list[Fade], t: float) -> None:
    for fade in fades:
        fade.t = min(1.0, max(0.0, t))
