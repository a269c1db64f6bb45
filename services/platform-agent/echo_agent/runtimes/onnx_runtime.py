"""The onnx runtime: ``ml.onnx`` runs a model with ONNX Runtime (CPU).

Config: ``echo_shared.catalogue.runtimes.OnnxConfig``. Two kinds of input:

- **image files** (``inputs`` unset; consumes files): each file record's image is read with
  Pillow, converted to ``image.color`` (RGB, BGR or L), resized (bilinear) to the model
  input's fixed spatial shape (or ``image.size``), scaled (``x * scale - mean) / std`` and
  laid out NCHW or NHWC as the model's input shape says. Files are gathered into batches
  of ``batch_count`` (or ``batch_seconds``) and inferred in one run when the model's batch
  dimension is dynamic, one by one when it is fixed to 1. The output record is the file
  record without ``path`` (the local copy is gone once processed) plus the outputs;
- **record fields** (``inputs: {tensor: field}``): each field holds a numeric (nested) list
  with the model input's shape without its batch dimension (or with it); records of a
  micro-batch with equal shapes are stacked into one run. The output record is the input
  record plus the outputs.

Outputs: every model output under its own name unless ``outputs`` maps some to fields (as
nested lists); with ``labels``, ``class`` is the label at the argmax of ``label_output``
(default: the first output) and ``score`` the value there.

``open()`` fails naming the path and the device when the model is missing, and naming the
model's inputs or outputs when the config names others. Inference runs on a worker thread,
so the agent's event loop (heartbeats, channels) keeps going during a long run.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
else:
    np = None  # imported with the first model (``_load_numpy``), not when the agent starts

from echo_shared.catalogue.runtimes import OnnxConfig

from ..operators.base import Operator, Record, TaskContext
from .process_runtime import MissingOnDevice

# ONNX tensor types -> numpy dtype names (numpy is imported when a model is loaded, not
# when the agent starts: an agent that runs no model does not carry it)
DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _load_numpy() -> None:
    global np
    if np is None:
        import numpy

        np = numpy


@functools.cache
def available() -> str | None:
    """Whether ONNX Runtime is installed (found, not imported: it and numpy weigh ~40 MB; a
    broken install fails the first deploy of a model, with the reason)."""
    for module in ("onnxruntime", "numpy"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    return None


class ModelError(ValueError):
    """The model cannot be loaded, or does not fit the config."""


class Onnx(Operator):
    """``ml.onnx``: inference on record fields (this class) or image files (``OnnxImages``)."""

    config: OnnxConfig

    def __new__(cls, config: Any) -> Any:
        if cls is Onnx and getattr(config, "inputs", ()) is None:
            cls = OnnxImages
        return super().__new__(cls)

    def __init__(self, config: OnnxConfig) -> None:
        _load_numpy()
        super().__init__(config)
        self.batch_count = config.batch_count
        self.batch_seconds = config.batch_seconds
        self.session: Any = None
        self.input_meta: dict[str, Any] = {}
        self.outputs: dict[str, str] = {}  # model output -> record field
        self.label_output = ""

    # ------------------------------------------------------------------ open

    async def open(self, ctx: TaskContext) -> None:
        await super().open(ctx)
        self.session = await asyncio.to_thread(self._load, ctx.device)
        self._check_io(ctx.device)

    def _load(self, device: str) -> Any:
        reason = available()
        if reason is not None:
            raise ModelError(f"no ONNX Runtime on device {device}: {reason}")
        import onnxruntime as ort

        path = Path(self.config.model).expanduser()
        if not path.is_file():
            raise MissingOnDevice(f"model {path} does not exist on device {device}")
        options = ort.SessionOptions()
        if self.config.threads is not None:
            options.intra_op_num_threads = self.config.threads
            options.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"cannot load model {path} on device {device}: {e}") from e

    def _check_io(self, device: str) -> None:
        cfg = self.config
        self.input_meta = {i.name: i for i in self.session.get_inputs()}
        model_outputs = [o.name for o in self.session.get_outputs()]
        where = f"model {cfg.model} (device {device})"
        if cfg.inputs is not None:
            unknown = sorted(set(cfg.inputs) - set(self.input_meta))
            if unknown:
                raise ModelError(
                    f"{where} has no input {unknown[0]!r}; its inputs: {sorted(self.input_meta)}"
                )
            missing = sorted(set(self.input_meta) - set(cfg.inputs))
            if missing:
                raise ModelError(f"inputs gives no field for input {missing[0]!r} of {where}")
            for name in cfg.inputs:
                _dtype(self.input_meta[name], where)
        if cfg.outputs is None:
            self.outputs = {name: name for name in model_outputs}
        else:
            unknown = sorted(set(cfg.outputs) - set(model_outputs))
            if unknown:
                raise ModelError(f"{where} has no output {unknown[0]!r}; its outputs: {model_outputs}")
            self.outputs = dict(cfg.outputs)
        if cfg.labels is not None:
            self.label_output = cfg.label_output or model_outputs[0]
            if self.label_output not in model_outputs:
                raise ModelError(f"{where} has no output {self.label_output!r}; its outputs: {model_outputs}")
            shape = next(o.shape for o in self.session.get_outputs() if o.name == self.label_output)
            if shape and isinstance(shape[-1], int) and shape[-1] != len(cfg.labels):
                raise ModelError(
                    f"labels has {len(cfg.labels)} names but output {self.label_output!r} of {where} "
                    f"has {shape[-1]} classes"
                )

    # ------------------------------------------------------------------ records

    async def process(self, record: Record) -> list[Record]:
        return await self.process_batch([record])

    async def process_batch(self, records: list[Record]) -> list[Record]:
        if not records:
            return []
        return await asyncio.to_thread(self._infer_records, records)

    def _infer_records(self, records: list[Record]) -> list[Record]:
        assert self.config.inputs is not None
        feeds: list[dict[str, np.ndarray]] = []
        single: list[bool] = []  # every input of the record lacked the batch dimension
        for record in records:
            arrays = {
                name: self._field_array(record, name, field) for name, field in self.config.inputs.items()
            }
            feeds.append({name: a for name, (a, _) in arrays.items()})
            single.append(all(added for _, added in arrays.values()))
        shapes = [{name: a.shape for name, a in feed.items()} for feed in feeds]
        stackable = (
            len(records) > 1
            and all(single)
            and all(self._batch_dim_free(name) for name in self.config.inputs)
            and all(s == shapes[0] for s in shapes)
        )
        if stackable:
            results = self._run(
                {name: np.concatenate([f[name] for f in feeds]) for name in self.config.inputs}
            )
            return [self._annotate(record, results, i) for i, record in enumerate(records)]
        return [
            self._annotate(record, self._run(feed), 0 if one else None)
            for record, feed, one in zip(records, feeds, single, strict=True)
        ]

    def _field_array(self, record: Record, name: str, field: str) -> tuple[np.ndarray, bool]:
        """The input array (with a batch dimension) and whether it was added here."""
        if field not in record:
            raise ValueError(f"ml.onnx: record has no field {field!r} (input {name!r}): {record!r:.200}")
        meta = self.input_meta[name]
        try:
            arr = np.asarray(record[field], dtype=_dtype(meta, self.config.model))
        except (ValueError, TypeError) as e:
            raise ValueError(f"ml.onnx: field {field!r} (input {name!r}) is not a numeric array: {e}") from e
        rank = len(meta.shape) if meta.shape is not None else None
        if rank is not None and arr.ndim == rank - 1:
            return arr[None], True
        if rank is not None and arr.ndim != rank:
            raise ValueError(
                f"ml.onnx: field {field!r} has {arr.ndim} dimensions; input {name!r} takes {rank} "
                f"(shape {meta.shape}), or {rank - 1} without the batch dimension"
            )
        return arr, False

    def _batch_dim_free(self, name: str) -> bool:
        shape = self.input_meta[name].shape
        return bool(shape) and not isinstance(shape[0], int)

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(dict.fromkeys([*self.outputs, *([self.label_output] if self.label_output else [])]))
        values = self.session.run(names, feed)
        return dict(zip(names, values, strict=True))

    def _annotate(self, record: Record, results: dict[str, np.ndarray], i: int | None) -> Record:
        """The record plus row ``i`` of every output (``None``: the record brought its own
        batch dimension, so it gets whole outputs, and lists of classes and scores)."""
        out = dict(record)
        for name, field in self.outputs.items():
            value = results[name]
            out[field] = (value[i] if i is not None and value.ndim else value).tolist()
        if self.config.labels is not None:
            scores = np.asarray(results[self.label_output])
            if i is not None:
                out["class"], out["score"] = self._label(scores[i])
            else:
                pairs = [self._label(row) for row in scores.reshape(scores.shape[0], -1)]
                out["class"], out["score"] = [c for c, _ in pairs], [s for _, s in pairs]
        return out

    def _label(self, row: np.ndarray) -> tuple[str, float]:
        assert self.config.labels is not None
        scores = np.asarray(row).ravel()
        k = int(scores.argmax())
        if k >= len(self.config.labels):
            raise ModelError(
                f"output {self.label_output!r} has {scores.size} classes, "
                f"labels only {len(self.config.labels)}"
            )
        return self.config.labels[k], float(scores[k])


class OnnxImages(Onnx):
    """``ml.onnx`` on image files, in batches."""

    wants_batches = True

    def __init__(self, config: OnnxConfig) -> None:
        super().__init__(config)
        self.tensor = ""
        self.layout = "NCHW"
        self.size = (0, 0)
        self.per_item = False
        self.dtype: Any = np.float32

    def _check_io(self, device: str) -> None:
        super()._check_io(device)
        img, where = self.config.image, f"model {self.config.model} (device {device})"
        names = list(self.input_meta)
        if img.tensor is not None and img.tensor not in self.input_meta:
            raise ModelError(f"{where} has no input {img.tensor!r}; its inputs: {names}")
        if img.tensor is None and len(names) != 1:
            raise ModelError(f"{where} has inputs {names}: name the image's in image.tensor")
        self.tensor = img.tensor or names[0]
        meta = self.input_meta[self.tensor]
        self.dtype = _dtype(meta, where)
        shape = list(meta.shape or [])
        if len(shape) != 4:
            raise ModelError(
                f"input {self.tensor!r} of {where} has shape {shape}, not an image batch (4 dims)"
            )
        channels = 1 if img.color == "L" else 3
        layout = img.layout or ("NCHW" if shape[1] in (1, 3) else "NHWC" if shape[3] in (1, 3) else None)
        if layout is None:
            raise ModelError(
                f"cannot tell the layout of input {self.tensor!r} {shape} of {where}: set image.layout"
            )
        self.layout = layout
        h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
        c = shape[1] if layout == "NCHW" else shape[3]
        if isinstance(c, int) and c != channels:
            raise ModelError(
                f"input {self.tensor!r} of {where} takes {c} channels, "
                f"image.color {img.color} gives {channels}"
            )
        if img.size is not None:
            self.size = img.size
        elif isinstance(w, int) and isinstance(h, int):
            self.size = (w, h)
        else:
            raise ModelError(f"input {self.tensor!r} of {where} has no fixed size {shape}: set image.size")
        self.per_item = shape[0] == 1

    async def process_batch(self, records: list[Record]) -> list[Record]:
        if not records:
            return []
        return await asyncio.to_thread(self._infer_images, records)

    def _infer_images(self, records: list[Record]) -> list[Record]:
        images = np.stack([self._image(r) for r in records])
        metas = [{k: v for k, v in r.items() if k != "path"} for r in records]
        if not self.per_item:
            results = self._run({self.tensor: images})
            return [self._annotate(m, results, i) for i, m in enumerate(metas)]
        return [
            self._annotate(m, self._run({self.tensor: images[i : i + 1]}), 0) for i, m in enumerate(metas)
        ]

    def _image(self, record: Record) -> np.ndarray:
        from PIL import Image

        path = record.get("path")
        if not isinstance(path, str):
            raise ValueError(f"ml.onnx reads image files: a file record needs a 'path', got {record!r:.200}")
        img = self.config.image
        try:
            with Image.open(path) as im:
                pic = im.convert("L" if img.color == "L" else "RGB").resize(
                    self.size, Image.Resampling.BILINEAR
                )
        except (OSError, ValueError) as e:
            raise ValueError(f"ml.onnx: cannot read image {record.get('name') or path}: {e}") from e
        x: Any = np.asarray(pic, dtype=np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        if img.color == "BGR":
            x = x[:, :, ::-1]
        x = (x * img.scale - np.asarray(img.mean, dtype=np.float32)) / np.asarray(img.std, dtype=np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        out: np.ndarray = x.astype(self.dtype)
        return out


def _dtype(meta: Any, where: str) -> Any:
    dtype = DTYPES.get(meta.type)
    if dtype is None:
        raise ModelError(f"input {meta.name!r} of {where} has type {meta.type}, which ml.onnx cannot feed")
    return np.dtype(dtype)


OPERATORS: dict[str, type[Operator]] = {"ml.onnx": Onnx}
