"""Console answers without a browser: 404 pages that name the object, an unreachable catalog."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_an_unknown_pack_or_job_is_a_404_page_naming_it(learned):
    from skillstore.server import create_app

    with TestClient(create_app(learned.env.settings)) as client:
        for path, named in (("/ui/packs/4242", "4242"), ("/ui/packs/nosuch@v3", "nosuch"),
                            ("/ui/jobs/777", "777"), ("/ui/states/999", "999"),
                            ("/ui/experiments/nothing", "nothing"), ("/ui/nowhere", "/ui/nowhere")):
            answer = client.get(path)
            assert answer.status_code == 404, path
            assert "text/html" in answer.headers["content-type"]
            assert named in answer.text and "Traceback" not in answer.text


def test_a_database_outage_shows_catalog_unreachable(tmp_path):
    from skillstore.server import create_app
    from skillstore.settings import Settings

    settings = Settings(home=tmp_path, api_open_reads=True,
                        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    with TestClient(create_app(settings)) as client:
        answer = client.get("/ui/packs")
    assert answer.status_code == 503
    assert "Catalog unreachable" in answer.text and "Traceback" not in answer.text


def test_closed_reads_need_a_signed_in_token(learned):
    from skillstore.server import create_app

    from .conftest import TOKEN

    settings = learned.env.settings.model_copy(update={"api_open_reads": False})
    with TestClient(create_app(settings)) as client:
        refused = client.get("/ui/bases")
        assert refused.status_code == 401 and "sign in" in refused.text
        client.post("/ui/signin", data={"token": TOKEN})
        assert client.get("/ui/bases").status_code == 200
