"""The server's SQLite job store, in this process: what a job's record says, queue order, and what a
restart does to a job that was running (test_serve.py drives the same store through a real server)."""

from __future__ import annotations

import sqlite3

from stylerun.engine.checkpoint import SUFFIX
from stylerun.serve.store import FIELDS, Store


def test_a_new_job_is_queued_with_its_options_and_place_in_line(tmp_path):
    store = Store(tmp_path)
    first = store.add({"iterations": 7, "size": 32}, styles=2)
    second = store.add({"size": 64}, styles=1)
    assert len(first) == 32 and int(first, 16) >= 0 and first != second  # a uuid's hex: safe in a file name
    job = store.get(first)
    assert job == {"id": first, "status": "queued", "iteration": 0, "iterations": 7, "loss": None,
                   "content_loss": None, "style_loss": None, "eta_s": None, "error": None, "resumed_from": None,
                   "options": {"iterations": 7, "size": 32}, "styles": 2, "queue_position": 1}
    assert store.get(second)["iterations"] == 0 and store.get(second)["queue_position"] == 2
    assert store.get("nope") is None


def test_updates_move_jobs_out_of_the_line(tmp_path):
    store = Store(tmp_path)
    ids = [store.add({"n": i}, styles=1) for i in range(3)]
    store.update(ids[0], status="running", iteration=3, loss=1.5, eta_s=2.0)
    job = store.get(ids[0])
    assert (job["status"], job["iteration"], job["loss"], job["eta_s"], job["queue_position"]) == \
        ("running", 3, 1.5, 2.0, None)
    assert [store.get(i)["queue_position"] for i in ids[1:]] == [1, 2]
    assert store.get(ids[1])["iteration"] == 0  # only the named job changed
    store.update(ids[2], status="done", error="x", resumed_from=4)
    assert (store.get(ids[2])["error"], store.get(ids[2])["resumed_from"]) == ("x", 4)
    assert store.ids() == ids
    assert store.ids("queued") == [ids[1]] and store.ids("done") == [ids[2]] and store.ids("cancelled") == []


def test_images_and_checkpoints_live_in_the_images_folder_under_the_jobs_id(tmp_path):
    store = Store(tmp_path / "data")
    job_id = store.add({}, styles=1)
    assert store.images == tmp_path / "data" / "images" and store.images.is_dir()
    assert store.image(job_id, "result") == store.images / f"{job_id}-result.png"
    assert store.checkpoint(job_id) == store.images / f"{job_id}{SUFFIX}"


def test_a_restart_marks_the_running_job_interrupted_and_keeps_the_rest(tmp_path):
    store = Store(tmp_path)
    running, queued, done = (store.add({"k": k}, styles=1) for k in range(3))
    store.update(running, status="running", iteration=5)
    store.update(done, status="done")
    store.db.close()
    again = Store(tmp_path)
    assert [again.get(i)["status"] for i in (running, queued, done)] == ["interrupted", "queued", "done"]
    assert again.get(running)["iteration"] == 5 and again.get(queued)["options"] == {"k": 1}


def test_a_database_from_before_resuming_gains_the_column(tmp_path):
    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    db.execute("create table jobs (id text primary key, status text, options text, styles integer, created real, "
               "finished real, iteration integer default 0, iterations integer default 0, loss real, "
               "content_loss real, style_loss real, eta_s real, error text)")
    db.execute("insert into jobs (id, status, options, styles, created) values ('old', 'done', '{}', 1, 0)")
    db.commit()
    db.close()
    store = Store(tmp_path)
    assert store.get("old")["resumed_from"] is None and store.get("old")["status"] == "done"
    store.update("old", resumed_from=2)
    assert store.get("old")["resumed_from"] == 2
    assert set(FIELDS) <= {row[1] for row in store.db.execute("pragma table_info(jobs)")}


def test_the_worker_thread_uses_the_store_the_server_opened(tmp_path):
    """The server opens the store; its worker threads add to and read it (every method takes the lock)."""
    import threading

    store = Store(tmp_path)
    seen = []

    def worker() -> None:
        job_id = store.add({}, styles=1)
        store.update(job_id, status="running")
        seen.append(store.get(job_id)["status"])

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(60)
    assert seen == ["running"] and store.ids("running") == store.ids()


def test_pages_are_newest_first_with_queue_positions(tmp_path):
    store = Store(tmp_path)
    ids = [store.add({"n": i}, styles=1) for i in range(4)]
    store.update(ids[1], status="running")
    page = store.page()
    assert [j["id"] for j in page] == ids[::-1] and store.total() == 4
    assert [j["queue_position"] for j in page] == [3, 2, None, 1]
    assert [j["id"] for j in store.page(offset=1, limit=2)] == [ids[2], ids[1]]
    assert store.get(ids[3])["queue_position"] == 3 and store.first("queued") == ids[0]
    assert store.first("running") == ids[1] and store.first("done") is None


def test_the_queue_cap_counts_queued_and_interrupted_jobs(tmp_path):
    store = Store(tmp_path)
    first = store.add({}, styles=1, max_waiting=2)
    second = store.add({}, styles=1, job_id="abc", max_waiting=2)
    assert second == "abc" and store.waiting() == 2
    assert store.add({}, styles=1, max_waiting=2) is None and store.total() == 2  # nothing queued
    store.update(first, status="interrupted")
    assert store.waiting() == 2
    store.update(first, status="running")
    assert store.waiting() == 1 and store.add({}, styles=1, max_waiting=2) is not None


def test_finished_jobs_expire_with_their_files_and_errors_name_no_server_paths(tmp_path):
    store = Store(tmp_path / "data")
    old, recent, running = (store.add({}, styles=1) for _ in range(3))
    for job_id in (old, recent, running):
        store.image(job_id, "result").write_bytes(b"png")
        store.checkpoint(job_id).write_bytes(b"npz")
    store.update(old, status="done", finished=1000.0)
    store.update(recent, status="failed", error=f"cannot read {store.images / 'x.png'} in {store.data}/y")
    store.update(running, status="running")
    assert store.get(recent)["error"] == "cannot read x.png in the data folder/y"
    assert store.expire(3600) == [old]
    assert store.get(old) is None and store.ids() == [recent, running]
    assert sorted(p.name for p in store.images.iterdir()) == sorted(
        f"{j}{suffix}" for j in (recent, running) for suffix in ("-result.png", ".ckpt.npz"))
    store.remove(recent)
    assert store.ids() == [running] and not list(store.images.glob(f"{recent}*"))


def test_finished_jobs_are_stamped_and_the_folder_is_this_users_only(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    store = Store(tmp_path / "link" / "data")  # reached through a link: the folder's two spellings differ
    modes = [oct(p.stat().st_mode & 0o777) for p in (store.data, store.images, store.data / "jobs.sqlite")]
    assert modes == ["0o700", "0o700", "0o600"]
    done, running = store.add({}, styles=1), store.add({}, styles=1)
    store.update(done, status="done")
    store.update(running, status="running")
    finished = dict(store.db.execute("select id, finished from jobs"))
    assert finished[done] is not None and finished[running] is None
    store.update(running, status="failed", error=f"{store.images.resolve()}/a.png and {store.images}/b.png")
    assert store.get(running)["error"] == "a.png and b.png"
    for _ in range(101):
        store.add({}, styles=1)
    assert len(store.page()) == 100
