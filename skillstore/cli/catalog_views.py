"""CLI: `pack list|show|lineage` and `job list|show`, read-only views of the catalog."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.tree import Tree

from ..errors import ConfigError
from ._common import JSON_OPTION, print_json, print_record, print_rows, short, workspace_session
from ._groups import JOB, PACK

PACK_COLUMNS = ["id", "name", "base", "status", "method", "size_bytes", "ratio", "blob"]


@PACK.app.command("list")
def pack_list(skill: str | None = typer.Option(None, help="Only this skill (name or id)."),
              status: str | None = typer.Option(
                  None, help="candidate, promoted, rejected or retired."),
              base: str | None = typer.Option(None, help="Only packs for this base."),
              limit: int = typer.Option(50, min=1, max=1000, help="Page size."),
              offset: int = typer.Option(0, min=0, help="Rows to skip (paging)."),
              as_json: bool = JSON_OPTION) -> None:
    """List packs, newest first, one page at a time."""
    from ..catalog import PackStatus, get_base, get_skill, list_packs, pack_rows, status_label
    from ..errors import unknown_name

    if status is not None and status not in PackStatus.__members__:
        raise unknown_name("pack status", status, list(PackStatus.__members__))
    with workspace_session() as (_, session):
        page = list_packs(session, skill=get_skill(session, skill) if skill else None,
                          base=get_base(session, base) if base else None,
                          status=status, limit=limit, offset=offset)
        rows = pack_rows(session, page.packs)
    for row in rows:
        row["blob"] = short(row["blob_digest"], 8)
        row["ratio"] = row["compression_ratio"]
        if not as_json:  # the JSON keeps the status value; "inconclusive" says the rest
            row["status"] = status_label(row["status"], row["inconclusive"])
    shown = f"{offset + 1}-{offset + len(rows)}" if rows else "0"
    print_rows(rows, PACK_COLUMNS, as_json=as_json, title="Skill packs",
               empty="No packs match.", footer=f"{shown} of {page.total}")


@PACK.app.command("show")
def pack_show(ref: str = typer.Argument(..., help="Pack id or SKILL@vN."),
              as_json: bool = JSON_OPTION) -> None:
    """Show a pack: metadata, direct parents, the experiment that made it and its history."""
    from ..catalog import get_pack, pack_detail

    with workspace_session() as (_, session):
        doc = pack_detail(session, get_pack(session, ref))
    if as_json:
        print_json(doc)
        return
    flat = {k: v for k, v in doc.items() if k not in ("parents", "history", "experiment")}
    flat["parents"] = ", ".join(f"{p['name']} ({p['kind']})" for p in doc["parents"]) or None
    if (origin := doc["experiment"]) is not None:
        flat["experiment"] = (f"{origin['experiment']} #{origin['experiment_id']}, run "
                              f"{origin['run_id']} ({origin['method']}, seed {origin['seed']})")
    print_record(flat, as_json=False, title=f"pack {doc['name']}")
    print_rows(doc["history"], ["at", "from", "to", "actor", "reason", "report_ref"],
               as_json=False, title="Status history")


def _label(node: dict, kind: str | None) -> str:
    if node.get("type") == "base":
        text = f"[bold]{node['name']}[/] (base)"
    else:
        text = f"[bold]{node.get('name', '?')}[/] #{node.get('pack_id')} {node.get('status', '')}"
    return f"{text} [dim]{kind}[/]" if kind else text


def _render_tree(graph, max_depth: int) -> Tree:
    nxt = graph.neighbours()
    tree = Tree(_label(graph.nodes.get(graph.root, {}), None))
    expanded: set[str] = set()
    # Pre-order depth-first without recursion (a 1,000-deep chain must not hit Python's
    # recursion limit); a node shared by several paths is expanded where it first appears.
    stack = [(tree, graph.root, 0)]
    while stack:
        branch, node, depth = stack.pop()
        if node in expanded:
            if nxt.get(node):
                branch.add("[dim](shown above)[/]")
            continue
        expanded.add(node)
        if not nxt.get(node):
            continue
        if depth >= max_depth:
            branch.add(f"[dim]... deeper than {max_depth}; use --max-depth or --json[/]")
            continue
        children = [(branch.add(_label(graph.nodes.get(other, {"name": other}), kind)), other)
                    for other, kind in nxt[node]]
        stack.extend((child, other, depth + 1) for child, other in reversed(children))
    return tree


@PACK.app.command("lineage")
def pack_lineage(ref: str = typer.Argument(..., help="Pack id or SKILL@vN."),
                 descendants_: bool = typer.Option(False, "--descendants",
                                                   help="Walk down to derived packs, not up."),
                 max_depth: int = typer.Option(30, min=1, help="Tree depth to print."),
                 as_json: bool = JSON_OPTION) -> None:
    """Print a pack's ancestors (or --descendants) as a tree; --json gives the graph."""
    from ..catalog import ancestors, descendants, describe_nodes, get_pack

    with workspace_session() as (_, session):
        pack = get_pack(session, ref)
        walk = descendants if descendants_ else ancestors
        graph = describe_nodes(session, walk(session, pack.id))
    if as_json:
        print_json(graph.to_json())
        return
    Console().print(_render_tree(graph, max_depth))


JOB_COLUMNS = ["id", "kind", "status", "stage", "progress", "attempts", "pack_id", "error"]


@JOB.app.command("list")
def job_list(status: str | None = typer.Option(
                 None, help="queued, running, succeeded, failed or cancelled."),
             limit: int = typer.Option(50, min=1, max=1000),
             offset: int = typer.Option(0, min=0),
             as_json: bool = JSON_OPTION) -> None:
    """List jobs, newest first."""
    from ..catalog import JobStatus, list_jobs
    from ..catalog.serialize import job_dict
    from ..errors import unknown_name

    if status is not None and status not in JobStatus.__members__:
        raise unknown_name("job status", status, list(JobStatus.__members__))
    with workspace_session() as (_, session):
        rows = [job_dict(j) for j in list_jobs(session, status=status, limit=limit, offset=offset)]
    print_rows(rows, JOB_COLUMNS, as_json=as_json, title="Jobs",
               empty="No jobs; queue one with `skillstore learn`.")


@JOB.app.command("show")
def job_show(job_id: str = typer.Argument(..., help="Job id."),
             as_json: bool = JSON_OPTION) -> None:
    """Show one job: parameters, progress, error and resulting pack."""
    from ..catalog import get_job
    from ..catalog.serialize import job_dict

    if not job_id.isdigit():
        raise ConfigError(f"{job_id!r} is not a job id; job ids are numbers.")
    with workspace_session() as (_, session):
        doc = job_dict(get_job(session, job_id))
    print_record(doc, as_json=as_json, title=f"job {job_id}")


def register(app: typer.Typer) -> None:
    """The commands attach to the shared groups when this module is imported."""
