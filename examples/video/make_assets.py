"""Generate the video example's assets: a small ONNX classifier and sample frames.

    python examples/video/make_assets.py [--out examples/video/assets] [--per-class 4]

writes ``model.onnx`` and ``frames/<class>-<nn>.png``. Nothing is downloaded: the model is
built with ``onnx.helper`` and its weights are fixed by hand, the frames are drawn with
Pillow from a seeded random generator, so the output is the same on every run.

The model is a real (if tiny) convolutional classifier over a 32x32 RGB image, NCHW, with
a dynamic batch dimension:

    image [N,3,32,32] -> Conv 1x1 (3 -> 3 evidence maps) -> GlobalAveragePool -> Flatten
      -> Gemm (x8) -> Softmax -> probabilities [N,3]   (labels: person, car, tree)

Each evidence map is "how much one colour channel dominates the other two" (2R-G-B for
person, 2B-R-G for car, 2G-R-B for tree), so a red-dominant frame is a "person", a
blue-dominant one a "car" and a green-dominant one a "tree". The frames are neutral grey
backgrounds with a noisy coloured shape of their class's colour, at various sizes (the
runtime resizes them to 32x32).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image, ImageDraw

LABELS = ["person", "car", "tree"]
COLOURS = {"person": (205, 55, 45), "car": (40, 70, 210), "tree": (50, 180, 60)}
SIZES = [(48, 36), (40, 40), (64, 32), (36, 48)]
SIDE = 32
OPSET = 17


def make_model(path: Path, batch: int | str = "N") -> None:
    """The classifier; ``batch`` is its batch dimension (dynamic ``N`` by default)."""
    # evidence channel c = 2 * (its colour) - (the other two); rows: person (R), car (B), tree (G)
    conv_w = np.array(
        [[2, -1, -1], [-1, -1, 2], [-1, 2, -1]],
        dtype=np.float32,
    ).reshape(3, 3, 1, 1)
    gemm_w = (8.0 * np.eye(3)).astype(np.float32)
    gemm_b = np.zeros(3, dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "conv_w"], ["evidence"], kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["evidence"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "gemm_w", "gemm_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "colour_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [batch, len(LABELS)])],
        initializer=[
            numpy_helper.from_array(conv_w, "conv_w"),
            numpy_helper.from_array(gemm_w, "gemm_w"),
            numpy_helper.from_array(gemm_b, "gemm_b"),
        ],
    )
    model = helper.make_model(
        graph,
        producer_name="echo-examples-video",
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string="labels: " + ", ".join(LABELS),
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def make_frame(label: str, index: int, rng: np.random.Generator) -> Image.Image:
    width, height = SIZES[index % len(SIZES)]
    grey = rng.integers(96, 160)
    pixels = np.clip(rng.normal(grey, 6, (height, width, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    w, h = int(width * rng.uniform(0.5, 0.7)), int(height * rng.uniform(0.5, 0.7))
    x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    jitter = rng.integers(-20, 21, 3)
    colour = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[label], jitter, strict=True))
    if index % 2:
        draw.ellipse([x, y, x + w, y + h], fill=colour)
    else:
        draw.rectangle([x, y, x + w, y + h], fill=colour)
    return img


def make_frames(out: Path, per_class: int, seed: int = 7) -> dict[str, str]:
    """Writes the frames; returns {file name: class}."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    truth: dict[str, str] = {}
    for i in range(per_class):
        for label in LABELS:
            name = f"{label}-{i:02d}.png"
            make_frame(label, i, rng).save(out / name, optimize=True)
            truth[name] = label
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "assets")
    parser.add_argument("--per-class", type=int, default=4, help="frames of each class")
    args = parser.parse_args()
    make_model(args.out / "model.onnx")
    truth = make_frames(args.out / "frames", args.per_class)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out / 'model.onnx'} and {len(truth)} frames ({total} bytes)")  # noqa: T201


if __name__ == "__main__":
    main()
