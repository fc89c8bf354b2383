"""The Loader that evaluate_state uses to run a suite on a model state materialised in memory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..states.materialise import load_packs, materialise
from ..states.view import StateView
from .cache import Loader, Suite


def suite_tag(view: StateView, suite: str) -> str | None:
    """The tag a suite is run under: its own skill's under the tag router (none for the general
    suite or a skill the state lacks); every other router routes by itself."""
    return suite if view.router == "tag" and suite in view.skills else None


def state_loader(model, tokenizer, view: StateView, blobs, *,
                 cache_dir: str | Path | None = None) -> Loader:
    """The Loader for evaluate_state: the tag router gets each skill's own pack (none for the
    general suite); every other router routes by itself. Packs are read once."""
    packs = load_packs(view, blobs, cache_dir)

    @contextmanager
    def load(suite: Suite) -> Iterator[tuple[object, object]]:
        with materialise(model, view, blobs, tag=suite_tag(view, suite.name),
                         pad_token_id=tokenizer.pad_token_id, cache_dir=cache_dir,
                         packs=packs) as m:
            yield m, tokenizer

    return load
