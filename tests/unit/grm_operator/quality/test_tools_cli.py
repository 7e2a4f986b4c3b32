"""`grm-operator quantize` and `grm-operator evaluate`: argument errors, idempotency, digests.

Everything here runs without llm-compressor or vLLM: bad arguments are refused before any engine
or compression run starts (exit status 2 and a message naming the argument), and an up-to-date
build is recognised from its manifest alone. The real runs are in e2e/test_quality_tools.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grm_operator.cli import main
from grm_operator.quality.recipe import BuildRecipe, recipe_digest
from grm_operator.tools.evaluate import checkpoint_precision
from grm_operator.tools.quantize import MANIFEST, tree_digest


def checkpoint(path: Path, quantization: dict[str, object] | None = None) -> Path:
    path.mkdir(parents=True)
    config: dict[str, object] = {"model_type": "llama"}
    if quantization is not None:
        config["quantization_config"] = quantization
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_evaluate_refuses_a_target_that_is_neither_url_nor_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = checkpoint(tmp_path / "ref")
    status = main(
        ["evaluate", "--variant", str(tmp_path / "nope"), "--reference", str(ref), "--json", "o.json"]
    )
    assert status == 2
    assert "--variant" in capsys.readouterr().err
    assert not Path("o.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--samples", "0"], "--samples must be ≥ 1"),
        (["--floor", "1.5"], "--floor must be within [0, 1]"),
        (["--confidence", "1"], "--confidence must be within (0, 1)"),
        (["--engine-option", "novalue"], "expected KEY=VALUE"),
        (["--engine-option", "vllm.max_num_seqs=0"], "bad engine options"),
    ],
)
def test_evaluate_argument_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    a, b = checkpoint(tmp_path / "a"), checkpoint(tmp_path / "b")
    out = tmp_path / "o.json"
    status = main(["evaluate", "--variant", str(a), "--reference", str(b), "--json", str(out), *extra])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_refuses_a_checkpoint_the_device_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    awq = checkpoint(tmp_path / "awq", {"quant_method": "awq"})
    ref = checkpoint(tmp_path / "ref")
    out = tmp_path / "o.json"
    argv = ["evaluate", "--variant", str(awq), "--reference", str(ref), "--json", str(out), "--device", "cpu"]
    assert main(argv) == 2
    assert "awq-int4 needs the Marlin GPU kernels" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_names_the_bad_line_of_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = checkpoint(tmp_path / "a")
    dataset = tmp_path / "set.jsonl"
    dataset.write_text('{"prompt": "q", "responses": ["x", "y"], "label": 0}\n{"prompt": "q"}\n')
    status = main(
        [
            "evaluate",
            "--variant",
            str(a),
            "--reference",
            str(a),
            "--dataset",
            str(dataset),
            "--json",
            "x.json",
        ]
    )
    assert status == 2
    assert f"{dataset}: line 2: 'responses' must be a list of strings" in capsys.readouterr().err


def test_evaluate_help_lists_the_interface() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grm_operator.cli", "evaluate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in ("--variant", "--reference", "--dataset", "--json"):
        assert flag in result.stdout


def test_checkpoint_precision_reads_the_quantization_config(tmp_path: Path) -> None:
    assert checkpoint_precision(checkpoint(tmp_path / "bf16")) == ("bf16", "none")
    fp8 = {
        "quant_method": "compressed-tensors",
        "config_groups": {"g": {"weights": {"type": "float", "num_bits": 8}}},
    }
    assert checkpoint_precision(checkpoint(tmp_path / "fp8", fp8)) == ("fp8", "compressed-tensors")
    int8 = {
        "quant_method": "compressed-tensors",
        "config_groups": {"g": {"weights": {"type": "int", "num_bits": 8}}},
    }
    assert checkpoint_precision(checkpoint(tmp_path / "int8", int8)) == ("int8", "compressed-tensors")
    assert checkpoint_precision(checkpoint(tmp_path / "awq", {"quant_method": "awq"})) == ("awq-int4", "awq")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scheme", "W8A8", "--calibration-samples", "0"], "calibration samples must be ≥ 1"),
        (["--scheme", "FP8_DYNAMIC", "--symmetric-activations"], "W8A8 only"),
    ],
)
def test_quantize_recipe_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    source = checkpoint(tmp_path / "src")
    status = main(["quantize", "--source", str(source), "--out", str(tmp_path / "out"), *args])
    assert status == 2
    assert message in capsys.readouterr().err


def test_quantize_refuses_an_unknown_scheme(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["quantize", "--source", str(tmp_path), "--scheme", "W2A2", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "invalid choice: 'W2A2'" in capsys.readouterr().err


def test_quantize_refuses_a_source_without_config_and_an_out_inside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["quantize", "--source", str(tmp_path / "empty"), "--scheme", "W8A8", "--out", "o"]) == 2
    assert "no config.json" in capsys.readouterr().err
    source = checkpoint(tmp_path / "src")
    assert main(["quantize", "--source", str(source), "--scheme", "W8A8", "--out", str(source / "q")]) == 2
    assert "must not be --source or inside it" in capsys.readouterr().err


def test_an_up_to_date_build_is_not_redone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = checkpoint(tmp_path / "src")
    out = checkpoint(tmp_path / "out")
    recipe = BuildRecipe("FP8_DYNAMIC").job_recipe()
    manifest = {
        "recipe_digest": recipe_digest(recipe),
        "source_digest": tree_digest(source),
        "digest": tree_digest(out),
    }
    (out / MANIFEST).write_text(json.dumps(manifest))
    # An interpreter that cannot run anything: reaching it would fail the command.
    argv = [
        "quantize",
        "--source",
        str(source),
        "--scheme",
        "FP8_DYNAMIC",
        "--out",
        str(out),
        "--python",
        "/bin/false",
    ]
    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().err
    # A changed output file is no longer the build the manifest describes: rebuilt (and here failing).
    (out / "model.safetensors").write_bytes(b"tampered")
    assert main(argv) == 1
    assert "compression run exited with status 1" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == b"tampered"  # a failed build leaves --out alone


def test_tree_digest_covers_names_and_contents(tmp_path: Path) -> None:
    a = checkpoint(tmp_path / "a")
    before = tree_digest(a)
    (a / "extra.txt").write_text("x")
    assert tree_digest(a) != before
    assert tree_digest(a, exclude=frozenset({"extra.txt"})) == before
    (a / "extra.txt").rename(a / "other.txt")
    assert tree_digest(a) != tree_digest(a, exclude=frozenset({"other.txt"}))
