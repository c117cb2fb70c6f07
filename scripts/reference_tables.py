"""Print docs/reference.md: every option of every config group, read from the registries and conf/.

    python scripts/reference_tables.py > docs/reference.md

tests/test_docs.py fails when the committed page differs from what this prints, so the page cannot go
stale: add a model, a pattern, an experiment or a sweep, and the test names the command above.
Sources: models from rarespur.config.names.MODELS and the registered builders (parameter counts on the
meta device, so nothing is allocated); experiments from rarespur.experiments.EXPERIMENTS; report
sections from the modules of rarespur.report; everything else from conf/<group>/*.yaml and
sweeps/*.yaml (the first sentence of each file's header comment and its values).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Shapes the parameter counts are given for: MNIST / Fashion, Colored MNIST, CIFAR-10.
SHAPES = {"1x28x28": (1, 28, 28), "3x28x28": (3, 28, 28), "3x32x32": (3, 32, 32)}
CLUSTER_KEYS = ("partition", "gpus_per_node", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism")


REF = re.compile(r"docs/([a-z_]+)\.md(#[a-z0-9-]+)?")


def cell(text: Any) -> str:
    """A value as a markdown table cell: docs references become links, pipes are escaped."""
    text = str(text).replace("|", "\\|")
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    return REF.sub(lambda m: f"[{m[1]}{m[2] or ''}]({m[1]}.md{m[2] or ''})", text)


def split_refs(text: str) -> tuple[str, str]:
    """`text` without its parenthesized docs references, and those references (as `docs/<page>.md#<anchor>` text).

    ``Deletion (docs/science.md#deletion): ...`` -> ``Deletion: ...`` and ``docs/science.md#deletion``; a
    parenthesis that also says something else keeps that: ``(docs/science.md#mitigation; the paper's notebook)``
    -> ``(the paper's notebook)``.
    """
    refs: list[str] = []

    def strip(match: re.Match[str]) -> str:
        parts = [part.strip() for part in re.split(r"[,;]", match[1])]
        refs.extend(part for part in parts if REF.fullmatch(part))
        kept = [part for part in parts if not REF.fullmatch(part)]
        return f" ({'; '.join(kept)})" if kept else ""

    return re.sub(r"\s*\(([^()]*docs/[a-z_]+\.md[^()]*)\)", strip, text).strip(), " ".join(refs)


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def first_sentence(text: str) -> str:
    """Up to the first ': ' or '. ' outside parentheses (the rest of a header is detail)."""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch in ".:?" and (i + 1 == len(text) or text[i + 1] == " "):
            return text[: i + 1] if ch == "?" else text[:i]
    return text.rstrip(".")


def header(path: Path) -> str:
    """The first sentence of a YAML file's leading comment (package lines and command examples left out)."""
    words = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        body = line[1:]
        if body.strip().startswith("@package"):
            continue
        if body.startswith("   ") or not body.strip():  # an indented command line ends the prose
            break
        words.append(body.strip())
    if not words:  # a trailing comment on the first key: `name: vae_mlp  # ...`
        first = path.read_text().splitlines()[0]
        words = [first.partition("#")[2].strip()] if "#" in first else []
    return first_sentence(" ".join(words))


def yaml_files(group: str) -> list[Path]:
    return sorted((ROOT / group).glob("*.yaml"))


def values(data: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    """`key=value` pairs of a config node's own keys, nested nodes flattened with dots."""

    def flat(node: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for key, value in node.items():
            if key in skip and not prefix:
                continue
            if isinstance(value, dict):
                out += flat(value, f"{prefix}{key}.")
            else:
                out.append(f"`{prefix}{key}={'null' if value is None else value}`")
        return out

    return " ".join(flat(data))


def models() -> str:
    import torch

    from rarespur.config.names import MODELS
    from rarespur.models import build_model, count_parameters, registry

    rows = []
    for name, entry in MODELS.items():
        also = ", ".join(f"`{a}`" for a in dict.fromkeys((entry.store_name, *entry.aliases)) if a != name)
        builder = registry._BUILDERS[name]
        what = (builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else ""
        counts = []
        for shape in SHAPES.values():
            try:
                with torch.device("meta"):
                    counts.append(f"{count_parameters(build_model(name, shape, 10)):,}")
            except ValueError:
                counts.append("--")
        rows.append([f"`{name}`", also or "--", entry.paper or "--", what, *counts])
    return table(["`model=`", "also accepted (any case)", "paper", "what", *SHAPES], rows)


def experiments() -> str:
    from rarespur.experiments import EXPERIMENTS
    from rarespur.experiments.experiment import no_parents

    rows = []
    for name, experiment in EXPERIMENTS.items():
        module = importlib.import_module(f"rarespur.experiments.{name}")
        summary = (module.__doc__ or "").strip().split("\n\n")[0]  # the first paragraph
        what = " ".join(summary.split())
        what, refs = split_refs(what)
        what = re.sub(rf"^``experiment={name}``\s*:?\s*", "", what)
        if callable(experiment.fields):
            own = "those of the chosen method"
        else:
            own = " ".join(f"`{p}.*`" for p in dict.fromkeys(k.split(".")[0] for k in experiment.fields)) or "--"
        parents = "yes" if experiment.requires is not no_parents else "--"
        rows.append([f"`{name}`", what, parents, own, refs or "--"])
    return table(["`experiment=`", "what", "builds on other runs", "own keys", "science"], rows)


def datasets() -> str:
    rows = []
    for path in yaml_files("conf/dataset"):
        data = yaml.safe_load(path.read_text())
        node = data.get("dataset", data)
        recipe = node.get("recipe", {})
        lr = recipe.get("lr", {})
        rows.append(
            [
                f"`{path.stem}`",
                split_refs(header(path))[0],
                " / ".join(f"{opt} {value}" for opt, value in lr.items()),
                recipe.get("weight_decay", ""),
                recipe.get("augment", ""),
                values(node, skip=("name", "path", "recipe")) or "--",
            ]
        )
    return table(["`dataset=`", "what", "lr (recipe)", "weight decay", "augment", "own keys"], rows)


def patterns() -> str:
    rows = []
    for path in yaml_files("conf/pattern"):
        data = yaml.safe_load(path.read_text())
        if "defaults" in data:
            (alias,) = [d for d in data["defaults"] if d != "_self_"]
            rows.append([f"`{path.stem}`", f"`{alias}`", "", header(path)])
        else:
            rows.append([f"`{path.stem}`", data.get("kind", ""), values(data, skip=("name", "kind")), header(path)])
    return table(["`pattern=`", "kind (or the name it stands for)", "values", "what"], rows)


def plugin_group(group: str, key: str) -> str:
    rows = []
    for path in yaml_files(f"conf/{group}"):
        data = yaml.safe_load(path.read_text())
        what = split_refs(header(path))[0]
        rows.append([f"`{path.stem}`", what, f"`{data.get('_target_', '')}`", values(data, ("_target_", "name"))])
    return table([f"`{key}=`", "what", "class (`_target_`)", "keys"], rows)


def setting_group(group: str) -> str:
    """A group whose files hold settings (no class): each choice, what its header says and its keys."""
    rows = []
    for path in yaml_files(f"conf/{group}"):
        data = yaml.safe_load(path.read_text()) or {}
        chosen = ", ".join(f"`{d}`" for d in data.pop("defaults", []))
        rows.append([f"`{group}={path.stem}`", header(path), values(data) or chosen or "--"])
    return table([f"`{group}=`", "what", "keys"], rows)


def optimizers() -> str:
    rows = [[f"`{p.stem}`", values(yaml.safe_load(p.read_text()), ("name",)) or "--"] for p in yaml_files("conf/optim")]
    return table(["`optim=`", "keys (lr: the dataset's recipe unless `train.lr` is set)"], rows)


def clusters() -> str:
    rows = []
    for path in yaml_files("conf/cluster"):
        data = yaml.safe_load(path.read_text())
        launcher = (data.get("hydra") or {}).get("launcher") or {}
        settings = " ".join(f"`{k}={launcher[k]}`" for k in CLUSTER_KEYS if launcher.get(k) is not None)
        device = f"`device={data['device']}`" if "device" in data else ""
        rows.append([f"`+cluster={path.stem}`", header(path), " ".join(s for s in (settings, device) if s) or "--"])
    return table(["preset", "what", "settings"], rows)


def sweep_params(path: Path) -> dict[str, Any]:
    """The sweep's ``hydra.sweeper.params``, those of the sweep files it builds on merged under its own."""
    data = yaml.safe_load(path.read_text())
    params: dict[str, Any] = {}
    for parent in data.get("defaults", []):
        if isinstance(parent, str) and (path.parent / f"{parent}.yaml").is_file():
            params.update(sweep_params(path.parent / f"{parent}.yaml"))
    params.update(((data.get("hydra") or {}).get("sweeper") or {}).get("params") or {})
    return params


@functools.cache
def override_parser() -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def jobs(path: Path) -> str:
    """The number of jobs of a sweep file: the product of its parameters' value counts."""
    parser = override_parser()
    count = 1
    for key, value in sweep_params(path).items():
        (override,) = parser.parse_overrides([f"{key}={value}"])
        count *= len(list(override.sweep_iterator())) if override.is_sweep_override() else 1
    return f"{count:,}"


def sweeps() -> str:
    files = {p.stem: p for p in yaml_files("sweeps")}
    rows = []
    for name, path in files.items():
        if name.endswith("_smoke"):
            continue
        smoke = files.get(f"{name}_smoke")
        twin = f"`{smoke.stem}` ({jobs(smoke)})" if smoke else "--"
        what, refs = split_refs(header(path))
        rows.append([f"`{name}`", what, jobs(path), twin, refs or "--"])
    return table(["`--config-name`", "what", "jobs", "smoke twin (jobs)", "science"], rows)


def report_sections() -> str:
    import rarespur.report as report
    from rarespur.report.sections import Section

    found = []
    for info in sorted(pkgutil.iter_modules(report.__path__), key=lambda m: m.name):
        section = getattr(importlib.import_module(f"rarespur.report.{info.name}"), "SECTION", None)
        if isinstance(section, Section):
            found.append((section.order, info.name, section))
    rows = []
    for _, module, section in sorted(found):
        for figure in section.figures:
            rows.append([f"`rarespur/report/{module}.py`", f"`{figure.slug}.png`", figure.title])
        for name in section.tables:
            rows.append([f"`rarespur/report/{module}.py`", f"`{name}` (CSV, LaTeX)", "table"])
    return table(["module", "figure or table", "title"], rows)


def main() -> None:
    parts = [
        "# Reference",
        "",
        "<!-- Generated by scripts/reference_tables.py from the registries and conf/; do not edit by hand.",
        "     Regenerate: python scripts/reference_tables.py > docs/reference.md -->",
        "",
        "Every option of every config group, as the code and `conf/` define them today. How to use them:",
        "[running.md](running.md); how to add one: [extending.md](extending.md).",
        "",
        "## Models",
        "",
        "Parameters with 10 classes for the image shape C x H x W of each column (MNIST and Fashion-MNIST,",
        "Colored MNIST, CIFAR-10); `--` where the model does not take that shape. Runs are stored under the",
        "original code's name, so every spelling of a model is the same run.",
        "",
        models(),
        "",
        "## Experiments",
        "",
        experiments(),
        "",
        "## Datasets",
        "",
        "Besides these, `dataset=` takes the original code's dataset strings (`mnistv8-3-0-0`), see",
        "[running.md](running.md#the-original-codes-dataset-strings).",
        "",
        datasets(),
        "",
        "## Patterns",
        "",
        patterns(),
        "",
        "## Optimizers",
        "",
        optimizers(),
        "",
        "## Regularizers",
        "",
        plugin_group("regularizer", "regularizer"),
        "",
        "## Debiasing methods",
        "",
        "With `experiment=debias`.",
        "",
        plugin_group("debias", "debias"),
        "",
        "## Parents",
        "",
        "`parent=` is null by default: every experiment that builds on a trained model builds on the train run",
        "of the same overrides; details in [experiments.md](experiments.md#building-on-a-debiased-model).",
        "",
        setting_group("parent"),
        "",
        "## Influence estimates",
        "",
        "With `experiment=group_influence`; details in [science.md](science.md).",
        "",
        setting_group("influence"),
        "",
        "## Loggers",
        "",
        "`logger=` is null (none) by default; several at once: `logger=[csv,mlflow]`. Details in",
        "[tracking.md](tracking.md).",
        "",
        setting_group("logger"),
        "",
        "## Notifications",
        "",
        "`notify=` is null by default; details in [running.md](running.md#a-message-when-a-sweep-ends).",
        "",
        setting_group("notify"),
        "",
        "## Cluster presets",
        "",
        "Added with `+cluster=<name>`; details in [cluster.md](cluster.md).",
        "",
        clusters(),
        "",
        "## Sweeps",
        "",
        "`python run.py -m --config-dir sweeps --config-name <name>`; details in [sweeps.md](sweeps.md).",
        "",
        sweeps(),
        "",
        "## Report figures and tables",
        "",
        "What `python -m rarespur report` draws, by the module that defines it.",
        "",
        report_sections(),
    ]
    print("\n".join(parts))


if __name__ == "__main__":
    main()
