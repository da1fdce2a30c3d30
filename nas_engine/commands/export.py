"""`python -m nas_engine export`: a bundle as an ONNX or TorchScript graph for other runtimes.

The graph carries the bundle's normalisation, so a runtime feeds it pixels, not
statistics: float32 N x C x S x S in [0, 1] (uint8 / 255), N any, S the trained size, and
gets float32 logits N x K back, in the order of the class names the graph also carries
(`nas_engine/model.py` says where). Resizing is the caller's: the graph takes S x S only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nas_engine.model import EXPORT_FORMATS, ExportInfo, export_model, load_model

DESCRIPTION = (
    "Export a bundle (directory or zip) as an ONNX or TorchScript graph that includes the preprocessing. "
    "The graph takes one input, 'images': float32 N x C x S x S with values in [0, 1] (uint8 pixels / 255), "
    "N any, C and S the bundle's channels and image size (no resize inside: give S x S images). "
    "It returns 'logits': float32 N x K, in the order of the bundle's classes, which the graph also "
    "carries (ONNX metadata_props 'classes' and 'nas_engine.model_json'; TorchScript extra file 'model.json')."
)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="a bundle directory, or a zip of one")
    parser.add_argument("--format", "-f", choices=EXPORT_FORMATS, required=True, help="graph format")
    parser.add_argument("--output", "-o", type=Path, required=True, metavar="FILE", help="the file to write")
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: torch's exporter's)")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")


def run_export(args: argparse.Namespace) -> int:
    model = load_model(args.bundle)
    info = export_model(model, args.output, args.format, opset=args.opset)
    if args.json:
        print(json.dumps({**info.to_dict(), "bundle": str(args.bundle), "classes": model.classes}))
    else:
        print(summary(info, args.bundle))
    return 0


def summary(info: ExportInfo, bundle: Path) -> str:
    i, o = info.input, info.output
    opset = f", opset {info.opset}" if info.opset is not None else ""
    shape = " x ".join(str(d) for d in i["shape"])
    return (
        f"exported {bundle} as {info.format}{opset} to {info.path} ({info.bytes / 1e6:.1f} MB): "
        f"input {i['name']!r} {i['dtype']} {shape} in [0, 1], N any; "
        f"output {o['name']!r} {o['dtype']} {' x '.join(str(d) for d in o['shape'])} logits"
    )
