"""A stand-in for vLLM's OpenAI server module: the worker's sim engine behind the module path
``vllm.entrypoints.openai.api_server``, so the worker's vLLM launcher can be tested without vLLM.

It records its command line in ``$FAKE_VLLM_ARGV`` and listens where the launcher told it to
(``--port`` or ``--uds``).
"""

from __future__ import annotations

from pathlib import Path

FAKE_SERVER = """
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int)
parser.add_argument("--uds")
parser.add_argument("--served-model-name")
args, rest = parser.parse_known_args()
with open(os.environ["FAKE_VLLM_ARGV"], "w") as f:
    json.dump(sys.argv[1:], f)
from grm_worker.cli import main
listen = ["--uds", args.uds] if args.uds else ["--host", "127.0.0.1", "--port", str(args.port)]
sys.exit(main(["sim-engine", *listen,
               "--served-name", args.served_model_name, "--time-scale", "100", "--log-level", "WARNING"]))
"""


def install_fake_vllm(root: Path) -> Path:
    """Writes the stand-in package under ``root`` (put ``root`` on the child's PYTHONPATH)."""
    package = root / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for level in (package.parents[1], package.parent, package):
        (level / "__init__.py").write_text("")
    (package / "api_server.py").write_text(FAKE_SERVER)
    return root
