"""The runtime must import and run where torch, optimum and transformers cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO

BLOCKER = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "optimum", "transformers", "nncf", "safetensors"):
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
""")


def test_runtime_runs_without_torch(artifacts, tmp_path):
    art = artifacts("qwen2", "int8")
    script = BLOCKER + textwrap.dedent(f"""
        import edgeds, sys
        from edgeds.batch import JobOptions, run_job
        for backend in ("onnxruntime", "openvino"):
            engine = edgeds.load({str(art)!r}, backend=backend)
            [r] = engine.generate(["def add(a, b):"], max_new_tokens=8)
            assert len(r.token_ids) == 8, r
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch was importable")
        banned = [m for m in sys.modules
                  if m.split(".")[0] in ("torch", "transformers", "optimum", "edgeds_export")]
        assert not banned, banned
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
