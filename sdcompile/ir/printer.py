"""Text form of the IR, so a user can read what each pass did (`--dump-ir`)."""

from __future__ import annotations

from sdcompile.ir.graph import Graph, Value

_SHORT = {"float32": "f32", "int32": "i32", "int64": "i64"}


def format_type(v: Value) -> str:
    return f"{_SHORT.get(v.dtype, v.dtype)}[{','.join(str(d) for d in v.shape)}]"


def _ref(g: Graph, name: str) -> str:
    v = g.values[name]
    sigil = "@" if v.kind == "weight" else "%"
    return f"{sigil}{name}:{format_type(v)}"


def format_graph(g: Graph) -> str:
    lines = [f"graph {g.meta.get('family', '?')} ("]
    lines += [f"  {_ref(g, i)}," for i in g.inputs]
    lines.append(") {")
    for n in g.nodes:
        outs = ", ".join(_ref(g, o) for o in n.outputs)
        ins = ", ".join(_ref(g, i) for i in n.inputs)
        attrs = " ".join(f"{k}={v}" for k, v in sorted(n.attrs.items()))
        lines.append(f"  {outs} = {n.op}({ins}){' {' + attrs + '}' if attrs else ''}  # {n.component}")
    lines.append(f"  return {', '.join('%' + o for o in g.outputs)}")
    lines.append("}")
    return "\n".join(lines)
