"""Console fixtures: a catalog filled by a real tiny learning run, a live server, a browser."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from skillstore.catalog.models import ExperimentPack
from tests.conftest import IN_CI
from tests.workerenv import FAST_OPTIONS, FAST_TRAIN, make_env, queue_job

TOKEN = "ui-test-token-0123456789"
TOKEN_HASH = hashlib.sha256(TOKEN.encode()).hexdigest()
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
#: Where `make screenshots` asks the browser tests to save the docs' screenshots; without it
#: they go to the test's own temporary folder, so a test run never rewrites tracked files.
SHOTS_ENV = "SKILLSTORE_UI_SHOTS"


@dataclass
class Learned:
    """The workspace after two learning jobs (reverse, then sort), a derived candidate, and an
    experiment (graft and naive_ft over the same two skills) run to the end."""

    env: object
    jobs: list[int]
    packs: dict[str, int]  # reverse, sort (promoted by the gate), derived (a candidate)
    experiment: int = 0
    experiment_packs: tuple[int, ...] = ()  # its graft run's catalog candidates


def _experiment_inline(env) -> tuple[int, tuple[int, ...]]:
    """A two-method experiment, each run executed in this process as its worker task runs it
    (begin, read inputs, execute, finish); returns its id and the graft run's pack ids."""
    from skillstore.experiments import parse_spec
    from skillstore.experiments.catalog import begin_run, create_experiment, finish_run
    from skillstore.experiments.methods import execute, run_inputs

    spec = parse_spec({"name": "console", "base": "tiny-llama",
                       "skills": [{"name": "reverse"}, {"name": "sort"}],
                       "methods": {"graft": {"router": "tag"}, "naive_ft": None},
                       "seeds": [0], "eval_limit": 10, "train": FAST_TRAIN})
    with env.catalog.session() as s:
        experiment = create_experiment(s, spec)
        exp_id, runs = experiment.id, [r.id for r in experiment.runs]
    for run_id in runs:
        with env.catalog.session() as s:
            begin_run(s, run_id)
        with env.catalog.session() as s:
            inputs = run_inputs(s, env.catalog.blobs, run_id)
        result = execute(inputs, lambda stage, fraction: None)
        with env.catalog.session() as s:
            finish_run(s, run_id, result, blobs=env.catalog.blobs)
    with env.catalog.session() as s:
        return exp_id, tuple(sorted(s.scalars(sa.select(ExperimentPack.pack_id))))


def _run_inline(env, job_id: int) -> None:
    """Every step of a queued job in this process, as a worker runs them (begin, step, done)."""
    from skillstore.pipeline import STEPS, lifecycle

    for stage, step in STEPS.items():
        with env.catalog.session() as s:
            lifecycle.begin(s, job_id, stage, socket.gethostname(), 1)
        with env.catalog.session() as s:
            step(s, job_id, env.settings)
        with env.catalog.session() as s:
            lifecycle.step_done(s, job_id, stage)


@pytest.fixture(scope="session")  # one learning run for both test modules
def learned(tmp_path_factory, tiny_zoo) -> Learned:
    from skillstore.catalog import EdgeKind, create_pack, get_pack

    env = make_env(tmp_path_factory.mktemp("ui"), tiny_zoo)
    env.settings = env.settings.model_copy(update={"api_token_hashes": (TOKEN_HASH,),
                                                   "api_open_reads": True})
    jobs = []
    for skill in ("reverse", "sort"):
        with env.catalog.session() as s:
            jobs.append(queue_job(s, env.settings, skill, sft=FAST_TRAIN, send=False,
                                  **FAST_OPTIONS))
        _run_inline(env, jobs[-1])
    with env.catalog.session() as s:
        packs = {skill: env.job(j).pack_id
                 for skill, j in zip(("reverse", "sort"), jobs, strict=True)}
        parent = get_pack(s, packs["reverse"])
        # A recompressed copy of the reverse pack: a candidate with a pack parent, for the
        # lineage graph and the promote action (same weights, so the router retrains on them).
        derived = create_pack(s, skill=parent.skill, base=parent.base,
                              blob_digest=parent.blob_digest, size_bytes=parent.size_bytes,
                              format_version=parent.format_version, method=parent.method,
                              parents=[(parent, EdgeKind.recompressed_from)],
                              compression_ratio=parent.compression_ratio, codecs=parent.codecs,
                              metrics=parent.metrics)
        packs["derived"] = derived.id
    experiment, made = _experiment_inline(env)
    yield Learned(env, jobs, packs, experiment, made)
    env.catalog.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(learned):
    """`skillstore serve`'s app on a free port, in a thread of this process."""
    import uvicorn

    from skillstore.server import create_app

    port = free_port()
    config = uvicorn.Config(create_app(learned.env.settings), host="127.0.0.1", port=port,
                            log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the console's server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def _require_browser() -> None:
    """In CI a missing Chromium is a failure (.ci/run installs it); locally, a skip."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if not missing:
        return
    message = f"browser tests need {', '.join(missing)}"
    if IN_CI:
        pytest.fail(f"{message}; .ci/run should have installed chromium and chromium-driver")
    pytest.skip(f"{message} (apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium driven by Selenium, one per module."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def shoot(browser, tmp_path):
    """Save the page the browser shows as NAME.png: in $SKILLSTORE_UI_SHOTS (docs/ui under
    `make screenshots`), else in the test's temporary folder. A page that renders to nothing
    fails the test."""
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> None:
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1280, min(max(height + 40, 600), 2400))
        path = shots / f"{name}.png"
        assert browser.save_screenshot(str(path)), f"the browser saved no screenshot of {name}"
        assert path.stat().st_size > 1000, f"{path} is {path.stat().st_size} bytes"
        browser.set_window_size(1280, 900)

    return take
