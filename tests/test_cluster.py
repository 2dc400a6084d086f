"""Steps on a Ray cluster (`cluster:` / `make --cluster`), on a private two-node cluster.

The cluster (tests/ray_netns.py) runs in a network namespace the test makes, on loopback, with
Ray's token auth; both nodes see the client's folder as an empty tmpfs, so every step built there
proves that nothing on a node reads a path of the client. The worker node has the custom resource
`trainer`. The keys and the recipe checks run without Ray.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recbuild.cli import main
from ray_netns import NetnsCluster, missing_tools

SMALL = ["--set", "vars.n_items=300", "--set", "vars.n_users=200", "--set", "vars.train_rows=3000",
         "--set", "vars.eval_rows=800", "--set", "artifacts.index.nlist=8",
         "--set", "artifacts.checkpoints.eval_every=2", "--set", "artifacts.checkpoints.epochs=1"]


# ------------------------------------------------------------------------------- without Ray

RECIPE = """\
version: 1
{extra}
sources:
  raw: {{path: data.txt}}
artifacts:
  copy: {{kind: command, deps: [raw], cmd: "cp ${{deps.raw}} ${{out}}/copy.txt"{resources}}}
"""


def _keys(project, extra: str = "", resources: str = "") -> dict:
    from recbuild.builders import all_builders
    from recbuild.core.recipe.graph import build_graph
    from recbuild.core.recipe.load import load_recipe
    from recbuild.core.workdir.workspace import Workspace

    path = project.recipe(RECIPE.format(extra=extra, resources=resources))
    builders = all_builders()
    recipe = load_recipe(str(path), [], builders)
    ws = Workspace(build_graph(recipe, builders), builders)
    try:
        return {name: ws.key(name) for name in recipe.nodes if not recipe.nodes[name].is_file_source}
    finally:
        ws.cache.close()


def test_cluster_and_resources_are_in_no_key(project):
    project.write("data.txt", "hello\n")
    plain = _keys(project)
    elsewhere = _keys(project, extra="cache: store\ncluster: {kind: ray, address: '10.0.0.1:6379'}",
                      resources=", resources: {cpus: 4, gpus: 1, memory: 2GiB, custom: {trainer: 1}}")
    assert plain == elsewhere and all(plain.values())


def test_resources_are_checked_and_kept_out_of_params(project):
    project.write("data.txt", "hello\n")
    project.recipe(RECIPE.format(extra="", resources=", resources: {cpu: 2}"))
    result = project.run("validate")
    assert result.code == 2
    assert "artifacts.copy.resources" in result.err and "cpu" in result.err

    from recbuild.core.recipe.load import load_recipe

    project.recipe(RECIPE.format(extra="", resources=", resources: {memory: 512MiB, custom: {trainer: 1}}"))
    node = load_recipe(str(project.path / "recbuild.yaml")).nodes["copy"]
    assert "resources" not in node.params
    assert node.resources == {"cpus": 1, "memory": "512MiB", "custom": {"trainer": 1}}


def test_cluster_needs_a_cache(project):
    project.write("data.txt", "hello\n")
    project.recipe(RECIPE.format(extra="cluster: {kind: ray, address: '127.0.0.1:9'}", resources=""))
    result = project.run("make")
    assert result.code == 2
    assert "recbuild.yaml" in result.err and "needs a shared cache" in result.err
    assert not (project.path / "build" / "copy").exists()


def test_local_overrides_the_recipe(project):
    project.write("data.txt", "hello\n")
    project.recipe(RECIPE.format(extra="cache: store\ncluster: {kind: ray, address: '127.0.0.1:9'}",
                                 resources=""))
    result = project.run("make", "--cluster", "local")
    assert result.code == 0, result.err
    assert project.read("build/copy/copy.txt") == "hello\n"


def test_a_node_with_another_toolchain_refuses():
    from recbuild.core.running.cluster import _toolchain_mismatch

    class Kind:
        toolchain = ("python",)

        @classmethod
        def key_facts(cls, params):
            return {"tool": "1.0"}

    import sys

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert _toolchain_mismatch(Kind, {}, {"toolchain": {"python": here}, "facts": {"tool": "1.0"}}) == ""
    assert _toolchain_mismatch(Kind, {}, {"toolchain": {"python": "2.7"}, "facts": {"tool": "1.0"}}) == (
        f"python: node {here}, client 2.7")


def test_sizes():
    from recbuild.core.running.cluster import ray_request, size_bytes

    assert size_bytes("2GiB") == 2 * 2**30 and size_bytes("1.5 GB") == 1_500_000_000 and size_bytes(1000) == 1000
    assert ray_request({"cpus": 2, "gpus": 1, "memory": "1KiB", "custom": {"trainer": 1}}) == {
        "CPU": 2.0, "GPU": 1.0, "memory": 1024.0, "trainer": 1.0}


# ------------------------------------------------------------------------------- on the cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = missing_tools()
    if why:
        pytest.skip(f"no private Ray cluster here: {why}")
    base = tmp_path_factory.mktemp("cluster")
    client = base / "client"
    client.mkdir()
    running = NetnsCluster(base)
    running.start_holder()
    try:
        running.head = running.start_node(head=True, hide=[client])
        running.worker = running.start_node(head=False, resources={"trainer": 1}, hide=[client])
        running.client = client
        running.store = base / "store"
        yield running
    finally:
        running.stop()


def _digests(workdir: Path) -> dict:
    found = {}
    for manifest in sorted(workdir.glob("*/MANIFEST.json")):
        found[manifest.parent.name] = json.loads(manifest.read_text())["digest"]
    return found


def test_dssm_builds_on_the_cluster_as_locally(cluster):
    local = cluster.client / "local"
    remote = cluster.client / "remote"
    for folder in (local, remote):
        done = subprocess.run([sys.executable, "-m", "recbuild.cli", "init", "dssm", str(folder)],
                              capture_output=True, text=True, env=cluster.env())
        assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-m", "recbuild.cli", "make", *SMALL], cwd=local,
                          capture_output=True, text=True, env=cluster.env(), timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr

    on_cluster = [*SMALL, "--cache", str(cluster.store), "--cluster", cluster.address,
                  "--set", "cluster={kind: ray, leave_in_store: [item_embeddings]}"]
    done = cluster.recbuild("make", *on_cluster, "-j", "2",
                            "--set", "artifacts.checkpoints.resources={custom: {trainer: 1}}",
                            "--heartbeat", "1", cwd=remote, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _digests(remote / "build") == _digests(local / "build")
    assert len(_digests(local / "build")) == 10
    # the train step, given the worker's resource, ran there, and its log says so
    assert f"checkpoints" in done.stdout and f"on node {cluster.worker[:12]}" in done.stdout
    beats = [line for line in done.stdout.splitlines() if line.startswith("  ... checkpoints (train): ")]
    assert any(f"node {cluster.worker[:12]}" in line for line in beats), done.stdout  # the CI heartbeat
    log = (remote / "build" / ".recbuild" / "logs" / "checkpoints.log").read_text()
    assert f"recbuild:checkpoints on Ray node {cluster.worker}" in log.splitlines()[0]
    assert "built" in done.stdout and "restored" not in done.stdout

    # build without the bytes: the intermediate item_embeddings stayed in the store
    left = remote / "build" / "item_embeddings"
    assert sorted(p.name for p in left.iterdir()) == ["MANIFEST.json"]
    assert json.loads((left / "MANIFEST.json").read_text())["in_store"] is True
    assert "files left in the store" in done.stdout

    # a second make is a no-op; one without the cluster restores the files left in the store
    again = cluster.recbuild("make", *on_cluster, "--set", "artifacts.checkpoints.resources={custom: {trainer: 1}}",
                             cwd=remote)
    assert again.returncode == 0 and "built" not in again.stdout and "restored" not in again.stdout, again.stdout
    here = cluster.recbuild("make", *SMALL, "--cache", str(cluster.store), cwd=remote)
    assert here.returncode == 0, here.stdout + here.stderr
    assert [line.split()[3] for line in here.stdout.splitlines() if line.startswith("  restored")] == ["item_embeddings"]
    assert "built" not in here.stdout and (left / "part-0.parquet").is_file()
    assert _digests(remote / "build") == _digests(local / "build")

    # a fresh workdir restores everything from the store, dispatching nothing
    shutil.rmtree(remote / "build")
    fresh = cluster.recbuild("make", *SMALL, "--cache", str(cluster.store), "--cluster", cluster.address,
                             cwd=remote)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    lines = fresh.stdout.splitlines()
    assert len([line for line in lines if line.startswith("  restored from cache")]) == 10, fresh.stdout
    assert not [line for line in lines if "on node" in line]
    assert _digests(remote / "build") == _digests(local / "build")

    # `executor: ray` of an embedding step goes on working inside a step on the cluster (its actor
    # on the cluster's other CPU); with a new store, the inputs built here are uploaded first
    shutil.rmtree(remote / "build" / "item_embeddings")
    inner = cluster.recbuild("make", "item_embeddings", *SMALL, "--cache", str(cluster.base / "store2"),
                             "--cluster", cluster.address, "--set", "artifacts.item_embeddings.executor=ray",
                             "--set", "artifacts.item_embeddings.ray={concurrency: 1}", cwd=remote)
    assert inner.returncode == 0, inner.stdout + inner.stderr
    assert [line.split()[1] for line in inner.stdout.splitlines() if line.startswith("  built")] == ["item_embeddings"]
    assert _digests(remote / "build") == _digests(local / "build")


def _command_project(cluster, name: str, cmd: str, resources: str = "") -> Path:
    folder = cluster.client / name
    folder.mkdir()
    (folder / "data.txt").write_text("hello\n")
    (folder / "recbuild.yaml").write_text(
        f"version: 1\ncache: {cluster.store}\ncluster: {{kind: ray, address: '{cluster.address}'}}\n"
        "sources:\n  raw: {path: data.txt}\n"
        f"artifacts:\n  step: {{kind: command, deps: [raw], cmd: '{cmd}'{resources}}}\n")
    return folder


def test_nodes_cannot_see_the_client_folder(cluster):
    """The proof that a step reads nothing of the client's: on the nodes, its folder is empty."""
    folder = cluster.client / "hidden"
    folder.mkdir()
    _command_project(cluster, "hidden/p", f"test ! -e {folder}/p/data.txt && cat ${{deps.raw}} > ${{out}}/x")
    done = cluster.recbuild("make", cwd=folder / "p")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (folder / "p" / "build" / "step" / "x").read_text() == "hello\n"
    here = cluster.recbuild("make", "-B", "--cluster", "local", cwd=folder / "p")
    assert here.returncode == 1, here.stdout  # here the file is there: the check is not vacuous


def test_unknown_resource_fails_before_any_work(cluster):
    folder = _command_project(cluster, "unknown", "cp ${deps.raw} ${out}/x", ", resources: {custom: {tpu: 1}}")
    started = time.monotonic()
    done = cluster.recbuild("make", cwd=folder)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "artifacts.step.resources" in errors[0] and "tpu 1" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not (folder / "build" / "step").exists()
    assert time.monotonic() - started < 120


def test_unreachable_cluster_fails_before_any_work(cluster):
    folder = _command_project(cluster, "unreachable", "cp ${deps.raw} ${out}/x")
    done = cluster.recbuild("make", "--cluster", "127.0.0.1:9", cwd=folder, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:9" in done.stderr and "Traceback" not in done.stderr
    assert not (folder / "build" / "step").exists() and "built" not in done.stdout


def test_step_error_is_the_local_line_with_its_log(cluster):
    folder = _command_project(cluster, "failing", "echo about to fail; exit 3")
    local = cluster.recbuild("make", "--cluster", "local", cwd=folder)
    remote = cluster.recbuild("make", cwd=folder)
    assert local.returncode == remote.returncode == 1
    line = "recbuild.yaml:7:3: artifacts.step: command exited with status 3; last output: about to fail"
    assert line in local.stderr and line in remote.stderr, remote.stderr
    log = (folder / "build" / ".recbuild" / "logs" / "step.log").read_text()
    assert "on Ray node" in log and "about to fail" in log and line in log
    assert not (folder / "build" / "step").exists()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_cancels_the_running_task(cluster):
    marks = cluster.base / "marks"
    marks.mkdir()
    folder = _command_project(cluster, "interrupted", f"echo $$ > {marks}/pid; exec sleep 60")
    client = cluster.popen([sys.executable, "-m", "recbuild.cli", "make"], cwd=folder,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (marks / "pid").exists() and (marks / "pid").read_text().strip():
                break
            time.sleep(0.1)
        pid = int((marks / "pid").read_text())
        assert Path(f"/proc/{pid}").exists()
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 130, out + err
    for _ in range(300):  # the step's process on the node is gone, not orphaned
        if not _alive(pid):
            break
        time.sleep(0.1)
    assert not _alive(pid), Path(f"/proc/{pid}/status").read_text()
    assert not (folder / "build" / "step").exists()


def test_ctrl_c_cancels_every_task_in_flight(cluster):
    """-j 2: two steps run at once, one a node; Ctrl-C stops both."""
    marks = cluster.base / "marks-j2"
    marks.mkdir()
    folder = cluster.client / "interrupted-j2"
    folder.mkdir()
    steps = "".join(f"  s{i}: {{kind: command, cmd: 'echo $$ >> {marks}/pids; exec sleep 60'}}\n" for i in (1, 2))
    (folder / "recbuild.yaml").write_text(
        f"version: 1\ncache: {cluster.store}\ncluster: {{kind: ray, address: '{cluster.address}'}}\n"
        f"artifacts:\n{steps}")
    client = cluster.popen([sys.executable, "-m", "recbuild.cli", "make", "-j", "2"], cwd=folder,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in _wait_for_lines(marks / "pids", 2)]
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 130, out + err
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)
    assert not list((folder / "build").glob("s*"))


def _raylet_of(cluster, pid: int) -> str:
    """The Ray node whose worker ran the step that started process ``pid``: the raylet named in the
    environment the step's command inherits from its worker (RAY_RAYLET_PID). Not by parent
    processes: the commands run below recbuild's reaper, which is not the worker's child."""
    raylets = {p: node for node, p in cluster.raylets().items()}
    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    named = [int(v.split(b"=", 1)[1]) for v in environment if v.startswith(b"RAY_RAYLET_PID=")]
    assert named and named[0] in raylets, f"process {pid} names no raylet of the cluster ({named})"
    return raylets[named[0]]


def _wait_for_lines(path: Path, count: int, seconds: float = 120) -> list[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lines = path.read_text().split() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"{path} did not get {count} lines")


def test_node_death_retries_then_fails_cleanly(cluster):
    """Runs last: it kills the nodes that have `trainer`. A spare one joins; the step's node is killed
    mid-step and Ray runs it again on the other; then that one is killed under the next step, which
    no live node can take any more: it fails cleanly and nothing is published."""
    import os

    cluster.spare = cluster.start_node(head=False, resources={"trainer": 1}, hide=[cluster.client])
    marks = cluster.base / "death"
    marks.mkdir()
    folder = _command_project(cluster, "death", f"echo $$ >> {marks}/pids; sleep 6; echo built > ${{out}}/x",
                              ", resources: {custom: {trainer: 1}}")
    client = cluster.popen([sys.executable, "-m", "recbuild.cli", "make"], cwd=folder,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = _raylet_of(cluster, int(_wait_for_lines(marks / "pids", 1)[0]))
        os.kill(cluster.raylets()[first], signal.SIGKILL)
        out, err = client.communicate(timeout=240)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 0, out + err
    assert len((marks / "pids").read_text().split()) == 2  # run again, once
    survivor = ({cluster.worker, cluster.spare} - {first}).pop()
    log = (folder / "build" / ".recbuild" / "logs" / "step.log").read_text()
    assert f"on Ray node {survivor}" in log.splitlines()[0] and f"on node {survivor[:12]}" in out
    assert (folder / "build" / "step" / "x").read_text() == "built\n"

    (folder / "recbuild.yaml").write_text((folder / "recbuild.yaml").read_text().replace("sleep 6", "sleep 60"))
    client = cluster.popen([sys.executable, "-m", "recbuild.cli", "make"], cwd=folder,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = int(_wait_for_lines(marks / "pids", 3)[2])
        os.kill(cluster.raylets()[_raylet_of(cluster, pid)], signal.SIGKILL)
        out, err = client.communicate(timeout=240)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 1, out + err
    assert "artifacts.step" in err and "nothing was published" in err and "Traceback" not in err
    assert (folder / "build" / "step" / "x").read_text() == "built\n"  # the previous artifact stays
