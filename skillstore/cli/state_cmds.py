"""CLI: `skillstore state list|show|fuse|route|eval|unload`, `report`,
`pack promote|reject|retire`."""

from __future__ import annotations

import getpass
from pathlib import Path

import typer

from ._common import JSON_OPTION, print_json, print_rows, workspace_session
from ._groups import PACK, STATE

REPORT_FORMAT = typer.Option("md", "--format", "-f", help="md, html or json.")
ROUTE_PROMPTS = 500  # training prompts per class for `state route`


def _state_row(session, state) -> dict:
    from ..states import load_view

    view = load_view(session, state)
    return {"id": state.id, "fingerprint": state.fingerprint, "base": view.base_name,
            "router": state.router,
            "packs": [f"{m.skill}@v{m.version}x{m.scale:g}" for m in view.members],
            "parent_id": state.parent_id, "description": state.description}


@STATE.app.command("list")
def state_list(as_json: bool = JSON_OPTION) -> None:
    """Every model state, newest first."""
    from ..catalog.states import list_states

    with workspace_session() as (_, session):
        rows = [_state_row(session, state) for state in list_states(session)[0]]
    print_rows(rows, ["id", "base", "router", "packs", "parent_id", "description"], as_json=as_json,
               title="Model states", empty="No model states yet.")


@STATE.app.command("show")
def state_show(ref: str = typer.Argument(..., help="State id or fingerprint."),
               as_json: bool = JSON_OPTION) -> None:
    """One state: its base, packs with scales, router and current-ness."""
    from ..catalog import current_head, get_state

    with workspace_session() as (_, session):
        state = get_state(session, ref)
        row = _state_row(session, state)
        head = current_head(session, state.base_id)
        row["current"] = bool(head and head.state_id == state.id)
    if as_json:
        print_json(row)
    else:
        for k, v in row.items():
            typer.echo(f"{k:>12}: {v}")


@STATE.app.command("fuse")
def state_fuse(packs: list[str] = typer.Argument(..., help="Pack ids or SKILL@vN, at least two."),
               method: str = typer.Option("ties", "--method", "-m",
                                          help="learned, task_arithmetic or ties."),
               scale: float = typer.Option(1.0, "--scale", help="Scale of every input pack."),
               as_json: bool = JSON_OPTION) -> None:
    """Fuse packs into a candidate state; merged packs record `fused_from` lineage."""
    from ..catalog import get_pack
    from ..states import fuse_packs

    with workspace_session() as (catalog, session):
        rows = [get_pack(session, p) for p in packs]
        state = fuse_packs(session, catalog.blobs, rows, method, scale=scale,
                           actor=getpass.getuser(), cache_dir=catalog.settings.home / "cache")
        row = _state_row(session, state)
    print_json(row) if as_json else typer.echo(f"Candidate state {row['id']}: {row['description']}")


@STATE.app.command("route")
def state_route(ref: str = typer.Argument(..., help="State id or fingerprint."),
                general: Path | None = typer.Option(None, "--general",
                                                    help="JSONL of general prompts (no pack)."),
                top_k: int = typer.Option(1, "--top-k", min=1, help="Packs mixed per input."),
                features: str = typer.Option(
                    "ngrams", "--features",
                    help="What the router reads: ngrams (the prompt's hashed token 1-3-grams) "
                         "or hidden (the base's mean last hidden state)."),
                as_json: bool = JSON_OPTION) -> None:
    """Train the learned router on each skill's training prompts; prints the routed state."""
    from ..catalog import get_pack, get_state
    from ..curriculum.validate import load_rows
    from ..models import load_causal_lm
    from ..routing.learned import feature_kind
    from ..states import attach_router, load_view, router_prompts

    feature_kind(features)  # an unknown name is refused before the base is loaded
    with workspace_session() as (catalog, session):
        state = get_state(session, ref)
        view = load_view(session, state)
        general_prompts = [r["prompt"] for r in load_rows(general)] if general is not None else []
        packs = [get_pack(session, m.pack_id) for m in view.members]
        prompts = router_prompts(session, catalog.blobs, packs, general_prompts,
                                 limit=ROUTE_PROMPTS)
        model, tok = load_causal_lm(view.base_uri)
        routed = attach_router(session, catalog.blobs, state, model, tok, prompts, top_k=top_k,
                               features=features)
        row = _state_row(session, routed) | {
            "train_accuracy": routed.router_config.get("train_accuracy")}
    print_json(row) if as_json else typer.echo(
        f"Routed state {row['id']} (train accuracy {row['train_accuracy']:.3f})")


@STATE.app.command("eval")
def state_eval(ref: str = typer.Argument(..., help="State id or fingerprint."),
               tasks_dir: Path | None = typer.Option(
                   None, "--tasks-dir",
                   help="Folder of the task YAML for skills whose suite names tasks (a suite of "
                        "task YAML paths needs none)."),
               general: str | None = typer.Option(
                   None, "--general-suite",
                   help="The base's general suite: a task YAML, or a task under --tasks-dir ('' "
                        "for none; default: skillstore_general.yaml beside the skills' YAML)."),
               limit: int | None = typer.Option(None, "--limit",
                                                help="At most this many samples per task."),
               batch_size: int = typer.Option(16, "--batch-size", min=1),
               as_json: bool = JSON_OPTION) -> None:
    """Evaluate a state on its skills' suites and the general suite (cached results are reused)."""
    from ..catalog import get_state
    from ..catalog.serialize import eval_dict
    from ..evaluation import evaluate_state, general_suite, state_loader, state_suites
    from ..models import load_causal_lm
    from ..states import load_view

    with workspace_session() as (catalog, session):
        state = get_state(session, ref)
        view = load_view(session, state)
        suites = state_suites(session, view.skills, tasks_dir=tasks_dir)
        extra = (general_suite(general, beside=suites, tasks_dir=tasks_dir)
                 if general != "" else None)
        suites += [extra] if extra else []
        model, tok = load_causal_lm(view.base_uri)
        load = state_loader(model, tok, view, catalog.blobs,
                            cache_dir=catalog.settings.home / "cache")
        rows = [eval_dict(r) for r in evaluate_state(session, state, suites, load,
                                                     batch_size=batch_size, limit=limit,
                                                     blobs=catalog.blobs)]
    print_rows(rows, ["suite", "task", "metric", "value", "stderr", "n"], as_json=as_json,
               title=f"State {ref} results",
               empty=f"State {ref} has no suite to evaluate: it holds no packs and no general "
                     "suite was found; pass --general-suite.")


def report(state: str | None = typer.Option(None, "--state", help="State id or fingerprint."),
           pack: str | None = typer.Option(None, "--pack", help="Pack id or SKILL@vN."),
           fmt: str = REPORT_FORMAT,
           out: Path | None = typer.Option(None, "-o", "--out",
                                           help="Write here instead of stdout.")) -> None:
    """The forgetting report of a state or of a pack's gate decision."""
    from ..catalog import get_pack, get_state
    from ..errors import ConfigError
    from ..reports import build_report, render_report

    if (state is None) == (pack is None):
        raise ConfigError("Give exactly one of --state and --pack.")
    with workspace_session() as (catalog, session):
        data = build_report(session, state=get_state(session, state) if state else None,
                            pack=get_pack(session, pack) if pack else None, blobs=catalog.blobs)
        text = render_report(data, fmt)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"Wrote {out}")


def _override(action: str, doc: str | None = None):
    def command(ref: str = typer.Argument(..., help="Pack id or SKILL@vN."),
                reason: str = typer.Option(..., "--reason", help="Why; kept in the audit."),
                actor: str = typer.Option(None, "--actor", help="Who (default: your user name)."),
                as_json: bool = JSON_OPTION) -> None:
        from ..catalog import get_pack
        from ..catalog.serialize import promotion_dict
        from ..gate import override_pack

        with workspace_session() as (catalog, session):
            audit = override_pack(session, catalog.blobs, get_pack(session, ref), action,
                                  reason=reason, actor=actor or getpass.getuser())
            row = promotion_dict(audit)
        print_json(row) if as_json else typer.echo(
            f"Pack {row['pack_id']}: {row['from'].value} -> {row['to'].value} ({row['reason']}); "
            f"state {row['state_id']}")

    command.__doc__ = doc or (
        f"Manual override: {action} a pack, with a reason recorded in the audit.\n\nThe base's "
        "current state moves as the gate's would; a learned router is retrained for its packs.")
    return command


UNLOAD_DOC = ("Remove a pack's skill from its base's current state (`pack retire`).\n\n"
              "A learned router is retrained for the packs left, or they are grafted when there "
              "is nothing left to route between; with no pack left the state is the plain base. "
              "The reason is kept in the audit.")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app and the shared groups."""
    app.command("report")(report)
    for action in ("promote", "reject", "retire"):
        PACK.app.command(action)(_override(action))
    STATE.app.command("unload")(_override("retire", UNLOAD_DOC))
