"""Cut the workers' PostgreSQL connection mid-job (a TCP proxy, never the shared server).

Two outages: one while the step's transaction is open (mid-train: the commit fails), one as
a step begins (compress or evaluate: the connection itself fails). Each lasts OUTAGE_S.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy.engine import make_url

from skillstore.catalog import JobStatus
from skillstore.jobqueue import spawn_worker, stop_worker
from tests.workerenv import make_env

from .checks import assert_nothing_lost, queue
from .faults import TcpProxy

OUTAGE_S = 4.0
# Long enough that "a quarter into training" is seen (progress lands at most once a second)
# and the cut falls inside training even on an idle machine: 60 steps ended within a second
# there, and both cuts fell after the job had finished.
TRAIN = {"max_steps": 800, "batch_size": 8, "eval_every": 100, "patience": 100}


@pytest.fixture
def pg_proxy(postgres_url):
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    yield proxy, make_url(postgres_url).set(port=proxy.port).render_as_string(hide_password=False)
    proxy.stop()


def test_job_completes_across_database_outages(tmp_path, tiny_zoo, postgres_url, pg_proxy,
                                               private_redis, figures):
    proxy, proxied = pg_proxy
    # The test reads the catalog directly; only the worker goes through the proxy.
    env = make_env(tmp_path, tiny_zoo, database_url=postgres_url, broker_url=private_redis.url(0),
                   result_backend=private_redis.url(1), skills=("reverse", "sort"))
    worker_settings = env.settings.model_copy(update={"database_url": proxied})
    try:
        # The second job waits for the first (its train task retries meanwhile), and the
        # outages hit it: its transient retries must be counted apart from those waits.
        first = queue(env, "reverse")
        job_id = queue(env, "sort", train=TRAIN)
        worker = spawn_worker(worker_settings, concurrency=1, log_path=env.logs / "worker.log")
        cut_at = []
        try:
            for until in (lambda j: j.stage == "train" and j.progress > 0.25,  # mid-transaction
                          lambda j: j.stage in ("compress", "evaluate")):  # between, and at connect
                job = env.wait(job_id,
                               until=lambda j, u=until: u(j) or JobStatus(j.status).finished,
                               timeout=600)
                cut_at.append(f"{job.stage}:{job.progress:.2f}")
                proxy.cut()
                time.sleep(OUTAGE_S)  # the outage itself
                proxy.restore()
            env.wait(job_id, timeout=600)
            assert worker.poll() is None, "the worker died during the outage"
        finally:
            stop_worker(worker)
        job = env.job(job_id)
        summary = assert_nothing_lost(env, [first, job_id], f"outages at {cut_at}")
        assert job.status == JobStatus.succeeded, (job.stage, job.error)
        assert summary["succeeded"] == 2, summary
        assert cut_at[0].startswith("train:") and not cut_at[1].startswith("gate"), cut_at
        retries = (env.logs / "worker.log").read_text(errors="replace").count(
            "transient error, retrying")
        assert retries >= 2, "the outages never reached the worker: the proxy is not in the path"
        figures.update(outages=proxy.cuts, outage_s=OUTAGE_S, cut_at=cut_at,
                       transient_retries=retries, task_attempts=job.attempts, **summary)
    finally:
        env.catalog.close()
