"""The run directory must be shared by every node: the probe at job start, on a real 3-node Ray cluster
(cluster.local.LocalCluster) in which one worker node has its own private view of a directory (a
mount namespace: what a node without the shared filesystem sees)."""
import shutil

import pytest

from cluster.local import LocalCluster
from cluster.storage import PROBE_DIR, RunDirNotShared, check_shared_run_dir, node_reply, unshared_nodes
from core.errors import ConfigError
from core.raycluster import init_ray

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(node ids: head, shared, private; the directory the private node does not share)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs `unshare` (util-linux) to give a node its own view of a directory")
    root = tmp_path_factory.mktemp("storage")
    private = root / "nfs"
    private.mkdir()
    with LocalCluster(nodes=[{"shared_node": 1}, {"private_node": 1}], private_dirs={1: private}) as c:
        init_ray(c.address, logging_level="ERROR")
        try:
            ids = {}
            for n in ray.nodes():
                if n["Alive"]:
                    kind = "private" if "private_node" in n["Resources"] else (
                        "shared" if "shared_node" in n["Resources"] else "head")
                    ids[kind] = n["NodeID"]
            yield ids, private, root
        finally:
            ray.shutdown()


@pytest.mark.slow
def test_a_node_that_does_not_see_the_run_dir_stops_the_job(cluster):
    ids, private, _ = cluster
    run = private / "run"
    with pytest.raises(RunDirNotShared) as e:
        check_shared_run_dir(run)
    msg = str(e.value)
    assert f"node {ids['private'][:12]}" in msg and "cannot read the driver's probe file" in msg
    assert ids["head"][:12] not in msg and ids["shared"][:12] not in msg   # only the node that cannot see it
    assert str(run) in msg and "docs/cluster.md" in msg
    assert not (run / PROBE_DIR).exists()   # the probe cleans up after itself


@pytest.mark.slow
def test_a_shared_run_dir_passes_on_every_node(cluster):
    _, _, root = cluster
    assert check_shared_run_dir(root / "shared_run") == 3
    assert not (root / "shared_run" / PROBE_DIR).exists()


@pytest.mark.slow
def test_a_relative_run_dir_is_refused_on_several_nodes(cluster):
    with pytest.raises(ConfigError, match=r"output_dir=runs/x is relative, and the cluster has 3 nodes"):
        check_shared_run_dir("runs/x")


def test_replies_the_driver_cannot_see_are_named(tmp_path):
    # a node wrote its reply into a directory of its own: it succeeded there, the driver sees nothing
    (tmp_path / PROBE_DIR).mkdir()
    (tmp_path / PROBE_DIR / "tok").write_text("tok")
    assert node_reply(str(tmp_path), "tok", "aaa") is None   # a node that shares it
    other = tmp_path / "elsewhere"
    assert "cannot read the driver's probe file" in node_reply(str(other), "tok", "bbb")
    bad = unshared_nodes(tmp_path, "tok", {"aaa": ("h1", None), "ccc": ("h2", None), "bbb": ("h3", "broken")})
    assert bad == ["node bbb (h3): broken", "node ccc (h2): its reply file did not reach the driver's run directory"]
