"""Which inputs reach the outputs of a module (tower split check, EasyRec issue 460)."""

from __future__ import annotations

from recbuild.ml.exporter.formats import export_program


def inputs_reaching_outputs(module, inputs: dict) -> set[str]:
    """Input names whose values flow into at least one output of ``module``.

    Structural: the module is traced with torch.export and the graph is walked backwards from the
    outputs; an input that is read but cannot influence an output does not count.
    """
    import torch.utils._pytree as pytree

    program = export_program(module, inputs)
    paths = [path for path, _ in pytree.tree_flatten_with_path(((inputs,), {}))[0]]
    user_inputs = [spec for spec in program.graph_signature.input_specs
                   if spec.kind.name == "USER_INPUT"]
    placeholder_to_name = {}
    for path, spec in zip(paths, user_inputs):
        key = path[-1]
        placeholder_to_name[spec.arg.name] = getattr(key, "key", str(key))
    graph = program.graph_module.graph
    output = next(n for n in graph.nodes if n.op == "output")
    reached, stack = set(), [output]
    while stack:
        node = stack.pop()
        if node in reached:
            continue
        reached.add(node)
        stack.extend(node.all_input_nodes)
    return {placeholder_to_name[n.name] for n in reached
            if n.op == "placeholder" and n.name in placeholder_to_name}
