"""Where a service's sampled time goes, hop by hop, from py-spy flame graphs (SVG).

    python -m coded_invnet.tools.profile_hops docs/profiles/*.svg

Each frame's own samples go to the innermost frame of its stack that names a hop of that service (the
frontend's or a worker's); what names none is the event loop and gRPC's own machinery. py-spy samples
Python stacks, so the shares are of the sampled Python threads' active time: native gRPC threads
without Python frames are not in them (bench_serving's CPU per process counts everything).
"""

from __future__ import annotations

import argparse
import html
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

FRONTEND_HOPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "request in (handler, checks, decode)",
        ("InferenceServicer.", "InferenceService.", "_inputs", "decode_array", "_wrap_unary", "_checked"),
    ),
    (
        "queue and batcher",
        ("QueryQueue.", "Batcher.infer", "Batcher.submit", "Batcher._collect_forever", "Batcher.admit"),
    ),
    ("coding group", ("CodingGroup.", "Batcher._run_group", "ParityDelay.")),
    (
        "to the backends (Batch, stream write)",
        ("GrpcBackends.", "BatchStream.", "_Stream._requests", "arrays_to_proto", "_StreamRequestMixin."),
    ),
    ("from the backends (stream read)", ("_Stream._read", "arrays_from_proto", "_StreamResponseMixin.")),
    (
        "answer out (outputs, encode, response)",
        (
            "prediction_outputs",
            "encode_array",
            "StreamResponder.",
            "InferenceServicer.ModelStreamInfer",
            "_wrap_stream",
        ),
    ),
    ("metrics", ("ServingMetrics.", "MetricWrapperBase.")),
)
WORKER_HOPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model run (onnxruntime)", ("Session.run", "OnnxModel.run")),
    ("thread hand-off", ("_WorkItem.run", "_worker", "to_thread", "_write_to_self")),
    ("batch in (decode, checks)", ("arrays_from_proto", "decode_array", "_checked", "TensorSpec.check")),
    ("batch out (encode)", ("arrays_to_proto", "encode_array")),
    ("metrics", ("ServingMetrics.", "MetricWrapperBase.")),
    (
        "batch handling (responder, tasks)",
        ("BatchProcessor.", "StreamResponder.", "_wrap_stream", "WorkerRuntime.", "FaultInjector."),
    ),
)
MACHINERY = "event loop and gRPC machinery"
FRAME = re.compile(r'<title>(.*?)</title><rect [^>]*?y="(\d+)"[^>]*?fg:x="(\d+)" fg:w="(\d+)"')


@dataclass(frozen=True)
class Frame:
    depth: int  # the rectangle's y: deeper frames lie lower
    start: int  # first sample
    samples: int
    function: str


def frames(svg: str) -> list[Frame]:
    found = [
        Frame(int(y), int(x), int(w), html.unescape(title).split(" (")[0])
        for title, y, x, w in FRAME.findall(svg)
    ]
    return sorted(found, key=lambda f: (f.depth, f.start))


def hop_shares(svg: str, hops: tuple[tuple[str, tuple[str, ...]], ...]) -> tuple[dict[str, float], int]:
    """Percent of the sampled time per hop, and the number of samples."""
    every = frames(svg)
    by_depth: dict[int, list[Frame]] = {}
    for frame in every:
        by_depth.setdefault(frame.depth, []).append(frame)
    depths = sorted(by_depth)
    step = depths[1] - depths[0] if len(depths) > 1 else 0
    parent: dict[Frame, Frame] = {}
    in_children: Counter[Frame] = Counter()
    for frame in every:
        for above in by_depth.get(frame.depth - step, []) if step else []:
            if above.start <= frame.start < above.start + above.samples:
                parent[frame] = above
                in_children[above] += frame.samples
                break
    spent: Counter[str] = Counter()
    for frame in every:
        own = frame.samples - in_children[frame]
        if own <= 0:
            continue
        hop, node = MACHINERY, frame
        while True:
            named = next((label for label, functions in hops if node.function.startswith(functions)), None)
            if named is not None:
                hop = named
                break
            if node not in parent:
                break
            node = parent[node]
        spent[hop] += own
    total = sum(spent.values())
    labels = [label for label, _ in hops] + [MACHINERY]
    return {label: round(100 * spent[label] / max(total, 1), 1) for label in labels}, total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coded_invnet.tools.profile_hops", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "svgs", nargs="+", type=Path, help="py-spy flame graphs; names with 'worker' are workers'"
    )
    args = parser.parse_args(argv)
    for path in args.svgs:
        hops = WORKER_HOPS if "worker" in path.name else FRONTEND_HOPS
        shares, samples = hop_shares(path.read_text(), hops)
        listed = ", ".join(f"{label} {share:g}%" for label, share in shares.items() if share)
        print(f"{path.stem} ({samples} samples): {listed}")


if __name__ == "__main__":
    main()
