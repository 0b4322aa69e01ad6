"""scripts/gpu_check.sh's own parts on a CPU: it fails at once where torch sees no CUDA GPU, and
still leaves its one archive, with the commit id that scripts/fetch_wheels.sh wrote for a copy of
the tree without .git."""

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_without_cuda_it_fails_at_once_and_leaves_one_archive_with_the_commit(tmp_path):
    tree = tmp_path / "tree"  # a copy that travelled without .git
    (tree / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "gpu_check.sh", tree / "scripts")
    (tree / "wheels").mkdir()
    (tree / "wheels" / "COMMIT").write_text("0123abc\n")
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(tree / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": sys.executable,
                               "TMPDIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "cuda: CUDA is not visible to torch" in done.stderr
    [archive] = out.glob("gpu_check_*.tar.gz")
    with tarfile.open(archive) as tar:
        files = {Path(name).name: name for name in tar.getnames()}
        assert tar.extractfile(files["COMMIT"]).read() == b"0123abc\n"
        steps = tar.extractfile(files["steps.txt"]).read().decode()
    assert steps.splitlines()[0] == "commit 0123abc" and steps.splitlines()[-1] == "failed: cuda"
    assert (out / "steps.txt").read_text() == steps
    assert not list(tmp_path.glob("resexp-gpu-check-*"))  # its work folder is gone


def test_the_cuda_tests_fail_instead_of_skipping_where_the_check_requires_cuda():
    env = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "", "RESEXP_REQUIRE_CUDA": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "same_seed",
                           str(REPO / "tests" / "test_cuda.py")], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert done.returncode == 1 and "RESEXP_REQUIRE_CUDA=1 but torch sees no CUDA GPU" in done.stdout, done.stdout
    plain = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "same_seed",
                            str(REPO / "tests" / "test_cuda.py")], capture_output=True, text=True,
                           env={**env, "RESEXP_REQUIRE_CUDA": ""}, cwd=REPO, timeout=300)
    assert plain.returncode == 0 and "1 skipped" in plain.stdout, plain.stdout  # CI, which has no GPU
