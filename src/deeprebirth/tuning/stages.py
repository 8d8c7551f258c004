"""Stages of layer-wise tuning: which layers each learned merge trains, and where it is judged.

For each learned merge the plan applied, a stage trains the layers the merge created or
changed, so that the student reproduces the teacher at the merge's *block boundary*: the
first layers downstream that exist in both networks under the same name and with the same
output shape. Stages are ordered from the input side to the output side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..plan.plan import Plan, PlanEntry
from ..transforms.base import propagate_shapes, shape_of


@dataclass
class Stage:
    id: str
    #: Student modules whose parameters this stage trains.
    trainable: list[str]
    #: Module names (in both networks) whose outputs the student must reproduce.
    boundary: list[str]
    #: Trainable layers that an approximating merge (``APPROXIMATIONS``) created and no
    #: other merge gave a new job: the fine-tune keeps them at its base learning rate.
    approximating: list[str] = field(default_factory=list)


#: Merges whose new layers approximate the layer they replace (a compression), rather than
#: take over the job of layers that are gone. Tucker-2 factors every conv: with the merged
#: layers' learning rate on its factors, the whole network would train at that rate.
APPROXIMATIONS = frozenset({"tucker"})


def _module_nodes(gm: fx.GraphModule) -> dict[str, fx.Node]:
    return {n.target: n for n in gm.graph.nodes if n.op == "call_module"}


def _resolve(name: str, student: fx.GraphModule) -> list[str]:
    """The student layers that now compute ``name``: itself, the layers it was decomposed
    into (``name.0``, ...), or the conv it was fused into."""
    nodes = _module_nodes(student)
    if name in nodes:
        return [name]
    parts = [t for t in nodes if t.startswith(f"{name}.")]
    if parts:
        return parts
    for target in nodes:
        if name in getattr(student.get_submodule(target), "fused_from", ()):
            return [target]
    return []


def _seeds(entry: PlanEntry, teacher: fx.GraphModule) -> list[str]:
    """The layers (by their original names) that a learned merge created or changed."""
    if entry.kind == "streamline":
        return [entry.nodes[0]]
    if entry.kind == "block_pool":
        return list(entry.geometry.get("heads", {}))
    if entry.kind == "tucker":  # the conv is now three layers (two for a 1x1) under its name
        return [f"{entry.nodes[0]}.{i}" for i in range(entry.geometry.get("layers", 3))]
    if entry.kind == "branch_pool":  # the branch's tensor layers take over the pool's job
        pool = _module_nodes(teacher).get(entry.nodes[0])
        return [u.target for u in pool.users if u.op == "call_module"] if pool else []
    return list(entry.nodes[:1])


def find_stages(
    plan: Plan,
    applied: list[str],
    teacher: fx.GraphModule,
    student: fx.GraphModule,
    example: torch.Tensor,
) -> list[Stage]:
    """One stage per applied learned merge, ordered from input to output."""
    propagate_shapes(teacher, example)
    propagate_shapes(student, example)
    t_nodes, s_nodes = _module_nodes(teacher), _module_nodes(student)
    order = {n: i for i, n in enumerate(student.graph.nodes)}
    modules = dict(student.named_modules())

    def matched(node: fx.Node) -> bool:
        return (
            node.op == "call_module"
            and node.target in t_nodes
            and shape_of(node) is not None
            and shape_of(node) == shape_of(t_nodes[node.target])
        )

    stages, new_jobs = [], set()
    for entry in plan.entries:
        if entry.exact or entry.id not in applied:
            continue
        starts = {t for name in _seeds(entry, teacher) for t in _resolve(name, student)}
        if not starts:
            continue
        if entry.kind not in APPROXIMATIONS:
            new_jobs |= starts
        trainable, boundary, seen = [], [], set()
        frontier = [s_nodes[s] for s in sorted(starts)]
        while frontier:  # walk downstream until layers the teacher also has, same shape
            node = frontier.pop()
            if node in seen:
                continue
            seen.add(node)
            if node.op == "output":
                boundary.append(None)  # reached the output: judge the logits
                continue
            if matched(node) and node.target not in starts:
                boundary.append(node.target)
                continue
            if node.op == "call_module" and any(True for _ in modules[node.target].parameters()):
                trainable.append(node.target)
            frontier.extend(node.users)
        trainable.sort(key=lambda t: order[s_nodes[t]])
        stages.append(
            Stage(
                entry.id,
                trainable,
                sorted({b for b in boundary if b}) or ["<output>"],
                sorted(starts) if entry.kind in APPROXIMATIONS else [],
            )
        )
    # Merges that train the same layers against the same boundary are one stage.
    merged: dict[tuple, Stage] = {}
    for st in stages:
        key = (tuple(st.trainable), tuple(st.boundary))
        if key in merged:
            merged[key].id += f"+{st.id}"
            merged[key].approximating += st.approximating
        else:
            merged[key] = st
    stages = [st for st in merged.values() if st.trainable]
    for st in stages:
        st.approximating = sorted(set(st.approximating) - new_jobs)
    stages.sort(key=lambda st: order[s_nodes[st.trainable[0]]])
    return stages


def truncate(gm: fx.GraphModule, names: list[str]) -> fx.GraphModule:
    """A GraphModule sharing ``gm``'s layers that returns the outputs of the named layers.

    ``"<output>"`` stands for the network's own output.
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    result = graph.graph_copy(gm.graph, env)
    by_name = {n.target: env[n] for n in gm.graph.nodes if n.op == "call_module"}
    outs = tuple(result if name == "<output>" else by_name[name] for name in names)
    graph.output(outs)
    cut = fx.GraphModule(gm, graph)
    cut.graph.eliminate_dead_code()  # run only what the named layers need
    cut.recompile()
    return cut


def trainable_parameters(gm: nn.Module, names: list[str]) -> list[nn.Parameter]:
    modules = dict(gm.named_modules())
    return [p for name in names for p in modules[name].parameters()]
