"""The database helpers: SQLite writers queue in the process, raw driver paths."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.pool import QueuePool

from newsletter import db
from newsletter.config import load_settings
from newsletter.models import Subscriber


def test_sqlite_writers_queue_instead_of_sharing_the_file(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'n.db'}")
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with db.transaction(sessions) as session:
            session.add(Subscriber(email="a@example.org"))
            order.append("first in")
            inside.set()
            release.wait(5)
        order.append("first out")

    def second() -> None:
        inside.wait(5)
        with db.transaction(sessions) as session:
            order.append("second in")
            session.add(Subscriber(email="b@example.org"))

    with ThreadPoolExecutor(2) as pool:
        done = [pool.submit(first), pool.submit(second)]
        inside.wait(5)
        assert not release.wait(0.3)  # the second writer is waiting all this while
        assert order == ["first in"]
        release.set()
        for future in done:
            future.result(10)
    assert order == ["first in", "first out", "second in"]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 2
    engine.dispose()


def test_many_threads_write_at_once_and_nothing_is_lost(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'n.db'}", pool_size=16, max_overflow=16)
    db.upgrade(engine)
    sessions = db.session_factory(engine)

    def write(i: int) -> None:
        with db.transaction(sessions) as session:
            session.add(Subscriber(email=f"r{i}@example.org"))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(write, range(400)))
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Subscriber)) == 400
    engine.dispose()


def test_a_transaction_inside_another_on_the_same_thread_does_not_wait_for_itself(
    tmp_path: Path,
) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 'n.db'}")
    db.upgrade(engine)
    sessions = db.session_factory(engine)
    with db.transaction(sessions) as outer:
        outer.add(Subscriber(email="a@example.org"))
        with db.transaction(sessions) as inner:  # reads only: SQLite lets it
            assert inner.scalar(select(func.count()).select_from(Subscriber)) == 0
    engine.dispose()


def test_each_process_sizes_its_own_pool(tmp_path: Path) -> None:
    from tests.conftest import write_config

    cfg = write_config(tmp_path / "config.toml", f"sqlite:///{tmp_path / 'n.db'}")
    settings = load_settings(cfg)
    engine = db.open_engine(settings, pool_size=8)  # what the web asks for (web.threads)
    assert isinstance(engine.pool, QueuePool) and engine.pool.size() == 8
    engine.dispose()
    cfg.write_text(cfg.read_text().replace("[delivery]", "pool_size = 3\n\n[delivery]", 1))
    settings = load_settings(cfg)
    engine = db.open_engine(settings, pool_size=8)
    assert isinstance(engine.pool, QueuePool) and engine.pool.size() == 3  # the setting wins
    engine.dispose()
