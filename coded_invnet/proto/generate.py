"""Generate the Python gRPC stubs (and .pyi types) for protos/*.proto into this package.

`python -m coded_invnet.proto.generate` writes them; `--check` regenerates into a temporary folder and
fails with a diff when the committed files differ. The .proto files are staged under
coded_invnet/proto/ in a temporary include root, so protoc itself writes package-qualified imports
(`from coded_invnet.proto import inference_pb2`).

One post-edit: inference_pb2.py registers its messages in a descriptor pool of its own instead of
protobuf's default pool. tritonclient.grpc registers the same names (package `inference`, the Open
Inference Protocol) in the default pool, and a pool refuses a name twice, so without this a process
could not import both. Names, field numbers and the gRPC method paths (`/inference.GRPCInferenceService/
ModelInfer`, ...) are unchanged: on the wire nothing differs.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO_DIR = REPO_ROOT / "protos"
PACKAGE_PATH = Path("coded_invnet") / "proto"
GENERATED_PATTERNS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")
PRIVATE_POOL_MODULES = ("inference_pb2.py",)  # messages that tritonclient also defines
DEFAULT_POOL_CALL = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
PRIVATE_POOL_CALL = (
    "# generate.py: a pool of our own, so that tritonclient's `inference` package can live beside it\n"
    "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("
)


def _plugin(name: str) -> str:
    """mypy-protobuf's protoc plugins sit next to the interpreter (the venv's bin/), maybe not on PATH."""
    found = shutil.which(f"protoc-gen-{name}", path=str(Path(sys.executable).parent)) or shutil.which(
        f"protoc-gen-{name}"
    )
    if found is None:
        raise SystemExit(f"protoc-gen-{name} not found: install mypy-protobuf (make setup)")
    return found


def generate_into(out_root: Path) -> Path:
    """Run protoc over protos/*.proto; returns the folder holding the generated files."""
    with tempfile.TemporaryDirectory() as include_dir:
        staged = Path(include_dir) / PACKAGE_PATH
        staged.mkdir(parents=True)
        sources = sorted(PROTO_DIR.glob("*.proto"))
        for source in sources:
            shutil.copy(source, staged / source.name)
        out_root.mkdir(parents=True, exist_ok=True)
        args = [
            "grpc_tools.protoc",
            f"-I{include_dir}",
            *(f"--plugin=protoc-gen-{name}={_plugin(name)}" for name in ("mypy", "mypy_grpc")),
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--mypy_out={out_root}",
            f"--mypy_grpc_out={out_root}",
            *(str(PACKAGE_PATH / source.name) for source in sources),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed: {' '.join(args)}")
    for name in PRIVATE_POOL_MODULES:
        into_private_pool(out_root / PACKAGE_PATH / name)
    return out_root / PACKAGE_PATH


def into_private_pool(module: Path) -> None:
    """Make the generated ``module`` register its file in a new descriptor pool, not the default one."""
    text = module.read_text()
    if text.count(DEFAULT_POOL_CALL) != 1:
        raise SystemExit(f"{module.name}: protoc's output no longer has one `{DEFAULT_POOL_CALL}` line")
    module.write_text(text.replace(DEFAULT_POOL_CALL, PRIVATE_POOL_CALL))


def generated_files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for pattern in GENERATED_PATTERNS for p in sorted(folder.glob(pattern))}


def check(committed_dir: Path = PACKAGE_DIR) -> int:
    """0 when the stubs in ``committed_dir`` are what protos/ generates now, else 1 with a diff."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generated_files(generate_into(Path(tmp)))
    committed = generated_files(committed_dir)
    diff = [
        line
        for name in sorted(fresh.keys() | committed.keys())
        for line in difflib.unified_diff(
            committed.get(name, "").splitlines(keepends=True),
            fresh.get(name, "").splitlines(keepends=True),
            f"committed/{name}",
            f"regenerated/{name}",
        )
    ]
    if diff:
        sys.stdout.writelines(diff)
        print("\nGenerated stubs are stale: run `make proto` and commit the result.", file=sys.stderr)
        return 1
    print(f"{len(fresh)} generated files up to date")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail with a diff if the committed stubs differ")
    if parser.parse_args(argv).check:
        return check()
    for stale in generated_files(PACKAGE_DIR):
        (PACKAGE_DIR / stale).unlink()
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in generated_files(generate_into(Path(tmp))).items():
            (PACKAGE_DIR / name).write_text(text)
            print(f"wrote {PACKAGE_PATH / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
