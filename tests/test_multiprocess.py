"""Several `stillroom serve` processes share one PostgreSQL database.

PostgreSQL only, by nature: a SQLite file is meant for one serving process (its writers take turns on one
file lock), and the issue asks this of PostgreSQL.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import psycopg

from tests.conftest import LOCAL_MODEL, PG_ADMIN
from tests.live import fake_models_config, start_fake_upstream, start_server


def test_processes_sharing_postgres_see_each_others_completions(tmp_path: Path) -> None:
    name = f"stillroom_multi_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        # Started together on an empty database: the migration runs once, under an advisory lock.
        with ThreadPoolExecutor(3) as pool:
            servers = list(pool.map(lambda i: start_server(tmp_path, url, name=f"node{i}"), range(3)))
        clients = [openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0) for s in servers]
        tag = uuid.uuid4().hex

        def create(i: int) -> str:
            return (
                clients[i % 3]
                .chat.completions.create(
                    model=LOCAL_MODEL,
                    messages=[{"role": "system", "content": "Shared."}, {"role": "user", "content": f"n{i % 4}"}],
                    max_tokens=1,
                    store=True,
                    metadata={"tag": tag},
                )
                .id
            )

        with ThreadPoolExecutor(6) as pool:
            ids = set(pool.map(create, range(24)))
        for client in clients:
            assert {c.id for c in client.chat.completions.list(metadata={"tag": tag}, limit=100)} == ids
        some = sorted(ids)[0]
        clients[1].chat.completions.update(some, metadata={"seen_by": "node1"})
        assert clients[2].chat.completions.retrieve(some).metadata == {"tag": tag, "seen_by": "node1"}
        with psycopg.connect(url) as conn:
            # content shared across processes is stored once: 1 system + 4 distinct user messages
            assert conn.execute("SELECT count(*), sum(refs) FROM message_contents").fetchone() == (5, 48)
        for client in clients:
            client.close()
        for server in servers:
            server.stop()
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_stream_on_one_process_ending_after_a_short_call_on_another_is_paged_once(tmp_path: Path) -> None:
    """The cursor case across processes: node A streams (minted first, committed last), node B serves a
    short call meanwhile. A consumer paging node B with `after` sees both, each once: the commit sequence
    is taken under a row lock held to the commit, so the two processes number their rows in commit order."""
    name = f"stillroom_multi_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    fake = start_fake_upstream(tmp_path / "fake_upstream.log")
    config = fake_models_config(fake.url, {"fake": ("fake", None), "hold": ("hold", None)})
    servers = []
    try:
        servers = [start_server(tmp_path, url, config=config, name=f"node{i}") for i in range(2)]
        a, b = (openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=30) for s in servers)
        tag = uuid.uuid4().hex
        prompt = [{"role": "user", "content": "Tell me a long story."}]
        chunks = iter(
            a.chat.completions.create(
                model="hold", messages=prompt, stream=True, store=True, metadata={"tag": tag}, user=tag
            )
        )
        stream_id = next(chunks).id
        shorts = [
            b.chat.completions.create(model="fake", messages=prompt, store=True, metadata={"tag": tag}).id
            for _ in range(3)
        ]
        seen = [c.id for c in b.chat.completions.list(metadata={"tag": tag})]
        assert seen == shorts
        httpx.post(fake.url + "/chat/completions", json={"model": "release", "user": tag}).raise_for_status()
        assert list(chunks)  # ends once committed (by node A)
        later = a.chat.completions.create(model="fake", messages=prompt, store=True, metadata={"tag": tag}).id
        seen += [c.id for c in b.chat.completions.list(metadata={"tag": tag}, after=seen[-1])]
        assert seen == [*shorts, stream_id, later]
        assert stream_id < shorts[0]
        for client in (a, b):
            client.close()
    finally:
        for server in servers:
            server.stop()
        fake.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
