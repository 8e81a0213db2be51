"""``sammed models``: models, sizes, licences, whether weights are present and verified; download on request."""

from __future__ import annotations

import argparse
import json

from .options import tqdm_progress


def register(sub: argparse._SubParsersAction) -> None:
    """Add the command to ``sammed``'s subparsers."""
    p = sub.add_parser("models", help="list models, licences and whether weights are present and verified")
    p.add_argument("--download", metavar="ID", help="download and verify a model's weights (SAM only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List the registry, or download one model's weights."""
    from ..models import EXPORTED_RUNTIMES
    from ..models import REGISTRY
    from ..models import download_weights
    from ..models import model_status

    if args.download:
        progress = tqdm_progress(f"download {args.download}")
        try:
            path = download_weights(args.download, progress=lambda d, t: progress(d / max(t, 1), f"{d / 1e6:.0f} MB"))
        finally:
            progress.close()  # type: ignore[attr-defined]
        print(f"Saved and verified: {path}")
        return 0
    from ..backends import onnx_encoder

    installed = [r for r in EXPORTED_RUNTIMES if onnx_encoder.available(r)]
    rows = [model_status(spec) for spec in REGISTRY.values()]
    for row, spec in zip(rows, REGISTRY.values(), strict=True):  # what --runtime auto picks on the CPU
        row["runtime"] = installed[0] if installed and spec.family == "litemedsam" else "torch"
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':<12} {'size':>9}  {'licence':<11} {'present':<8} {'verified':<9} {'runtime':<8} description")
    for r in rows:
        print(
            f"{r['id']:<12} {r['size_mb']:>6.1f} MB  {r['licence']:<11} {str(r['present']):<8} "
            f"{str(r['verified']):<9} {r['runtime']:<8} {r['description']}"
        )
    state = {r: "installed" if r in installed else "not installed" for r in EXPORTED_RUNTIMES}
    print(
        f"Encoder runtimes: torch (reference), openvino (CPU: {state['openvino']}), onnx (ONNX Runtime, CPU: "
        f"{state['onnx']}); --runtime chooses."
    )
    return 0
