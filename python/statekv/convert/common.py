"""What every converter shares: the error type, output types, the GGML type of a tensor, writing a
GGUF atomically, the mmproj's ``clip.vision.*`` keys and the image processor's normalization.
Only numpy, gguf-py and the standard library (no torch, no transformers, not the compiled
extension)."""
from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "ConversionError", "OUTTYPES", "TextFamily", "add_tensor_infos", "tensor_qtype", "read_image_mean_std",
    "add_clip_vision_keys", "write_gguf_atomically",
]

logger = logging.getLogger("statekv.convert")


class ConversionError(ValueError):
    """The checkpoint cannot be converted (unsupported or malformed); the message names the file."""


def _gguf():
    import gguf  # gguf-py; imported lazily so `statekv --help` stays fast

    return gguf


# --------------------------------------------------------------------------------------------
# Output types
# --------------------------------------------------------------------------------------------

# outtype -> (GGMLQuantizationType name, LlamaFileType name)
OUTTYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}



@dataclass
class TextFamily:
    """How one Hugging Face architecture maps to a llama.cpp text architecture."""

    arch: str                                  # gguf MODEL_ARCH member name, e.g. "QWEN2"
    skip_prefixes: tuple[str, ...] = ()        # HF tensor names (after renaming) not in the text GGUF
    rename: tuple[tuple[str, str], ...] = ()   # substring replacements applied to HF names
    extra_params: Callable[[Any, dict, dict], None] | None = None  # (writer, hparams, config)
    # (hparams, config path) -> hparams: the family's defaults filled in and its own checks
    # (ConversionError naming the file), before anything is written
    prepare: Callable[[dict, Path], dict] | None = None
    # (GGUF tensor name, float data) -> the data as llama.cpp stores it
    transform: Callable[[str, np.ndarray], np.ndarray] | None = None

    def gguf_arch(self):
        return _gguf().MODEL_ARCH[self.arch]


def tensor_qtype(gguf_name: str, shape: tuple[int, ...], want, *, f32: Sequence[str] = (),
                 patch: Sequence[str] = (), outtype: str | None = None):
    """The GGML type llama.cpp's converter gives a tensor for the output type ``want``: 1-D tensors,
    ``*_norm.weight`` and names not ending in ``.weight`` (or containing one of ``f32``) stay F32;
    names containing one of ``patch`` (patch kernels) are F16 for ``outtype`` f16, else F32; a
    quantized type falls back to F16 for rows that are not a multiple of its block."""
    gguf = _gguf()
    Q = gguf.GGMLQuantizationType
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    if any(p in gguf_name for p in f32):
        return Q.F32
    if any(p in gguf_name for p in patch):
        return Q.F16 if outtype == "f16" else Q.F32
    if want not in (Q.F32, Q.F16):
        block, _ = gguf.GGML_QUANT_SIZES[want]
        if shape[-1] % block != 0:
            logger.warning("%s: row length %d is not a multiple of %d, falling back to F16",
                           gguf_name, shape[-1], block)
            return Q.F16
    return want


def add_tensor_infos(writer: Any, plan: Iterable[tuple[str, tuple[int, ...], Any]]) -> None:
    """Add the infos of ``(name, numpy shape, GGML type)`` tensors to ``writer``, in order."""
    gguf = _gguf()
    Q = gguf.GGMLQuantizationType
    for name, shape, qtype in plan:
        if qtype in (Q.F32, Q.F16):
            dt = np.dtype(np.float32 if qtype == Q.F32 else np.float16)
            writer.add_tensor_info(name, shape, dt, math.prod(shape) * dt.itemsize, raw_dtype=qtype)
        else:
            bshape = gguf.quant_shape_to_byte_shape(shape, qtype)
            writer.add_tensor_info(name, bshape, np.dtype(np.uint8), math.prod(bshape), raw_dtype=qtype)


def read_image_mean_std(hf_dir: Path, default: tuple[Sequence[float], Sequence[float]] | None = None
                        ) -> tuple[list[float], list[float]]:
    """The image processor's normalization of a checkpoint: preprocessor_config.json, then
    processor_config.json (its ``image_processor`` section) over it, as llama.cpp's converter
    merges them. ``default`` when neither has image_mean/image_std; ConversionError otherwise."""
    cfg: dict[str, Any] = {}
    for fname, section in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        p = Path(hf_dir) / fname
        if not p.is_file():
            continue
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConversionError(f"{p}: not valid JSON ({e})") from None
        if section and isinstance(d.get(section), dict):
            d = {**d, **d[section]}
        cfg.update(d)
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if mean is None or std is None:
        if default is None:
            raise ConversionError(f"{hf_dir}: image_mean / image_std not found (expected the image processor's "
                                  "preprocessor_config.json next to config.json)")
        logger.warning("%s: no image_mean/image_std in the processor configs; using %s / %s", hf_dir, *default)
        mean, std = default
    if len(mean) != 3 or len(std) != 3:
        raise ConversionError(f"{hf_dir}: image_mean / image_std must have 3 values, got {mean} / {std}")
    return [float(v) for v in mean], [float(v) for v in std]


def add_clip_vision_keys(writer: Any, *, projection_dim: int, image_size: int, patch_size: int, width: int,
                         ff: int, blocks: int, heads: int, mean: Sequence[float], std: Sequence[float],
                         projector: Any, eps: float) -> None:
    """The clip.vision.* keys every mmproj carries (llama.cpp's converter writes them for every
    projector), plus the projector type, GELU and the norm epsilon."""
    writer.add_clip_has_vision_encoder(True)
    writer.add_vision_projection_dim(int(projection_dim))
    writer.add_vision_image_size(int(image_size))
    writer.add_vision_patch_size(int(patch_size))
    writer.add_vision_embedding_length(int(width))
    writer.add_vision_feed_forward_length(int(ff))
    writer.add_vision_block_count(int(blocks))
    writer.add_vision_head_count(int(heads))
    writer.add_vision_image_mean([float(v) for v in mean])
    writer.add_vision_image_std([float(v) for v in std])
    writer.add_clip_projector_type(projector)
    writer.add_vision_use_gelu(True)
    writer.add_vision_attention_layernorm_eps(float(eps))


# transformers' SiglipVisionModel names (after the tower's own prefix) -> llama.cpp's v.* names, as
# llama.cpp's converter maps SigLIP-based towers (Gemma 3's, Eagle 2.5's).
_SIGLIP_LAYER = {"layer_norm1": "ln1", "layer_norm2": "ln2", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.out_proj": "attn_out", "mlp.fc1": "ffn_up",
                 "mlp.fc2": "ffn_down"}
_SIGLIP_FIXED = {"embeddings.patch_embedding.weight": "v.patch_embd.weight",
                 "embeddings.patch_embedding.bias": "v.patch_embd.bias",
                 "embeddings.position_embedding.weight": "v.position_embd.weight",
                 "post_layernorm.weight": "v.post_ln.weight", "post_layernorm.bias": "v.post_ln.bias"}
_SIGLIP_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def siglip_gguf_name(name: str) -> str | None:
    """The v.* name of a SigLIP tower tensor (``vision_model.`` nesting already stripped); None for
    the pooling head (``head.*``, which llama.cpp's towers do not use); "" for an unknown one."""
    if name.startswith("vision_model."):
        name = name[len("vision_model."):]
    if name.startswith("head."):
        return None
    if name in _SIGLIP_FIXED:
        return _SIGLIP_FIXED[name]
    m = _SIGLIP_LAYER_RE.match(name)
    if m and m.group(2) in _SIGLIP_LAYER:
        return f"v.blk.{m.group(1)}.{_SIGLIP_LAYER[m.group(2)]}.{m.group(3)}"
    return ""


def siglip_block_shapes(n_layer: int, C: int, F: int) -> dict[str, tuple[int, ...]]:
    """numpy shapes of the v.blk.N.* tensors of n_layer SigLIP blocks (width C, MLP width F)."""
    out = {}
    for i in range(n_layer):
        for t, shape in (("ln1", (C,)), ("ln2", (C,)), ("attn_q", (C, C)), ("attn_k", (C, C)), ("attn_v", (C, C)),
                         ("attn_out", (C, C)), ("ffn_up", (F, C)), ("ffn_down", (C, F))):
            out[f"v.blk.{i}.{t}.weight"] = shape
            out[f"v.blk.{i}.{t}.bias"] = (shape[0],)
    return out


def match_mmproj_tensors(st: Any, hf_dir: Path, want: dict[str, tuple[int, ...]],
                         to_gguf: Callable[[str], str | None], projector: str, expected: str) -> dict[str, str]:
    """GGUF name -> checkpoint name for every tensor of ``want`` (GGUF name -> numpy shape):
    ``to_gguf(name)`` is None for tensors the mmproj does not take, "" (or a name outside ``want``)
    for a vision tensor with no place in it. ConversionError naming the file for an unexpected,
    misshapen, doubly mapped or missing tensor (``expected`` says what checkpoint was expected)."""
    sources: dict[str, str] = {}
    for hf_name in st.names():
        gname = to_gguf(hf_name)
        if gname is None:
            continue
        where = st.entries[hf_name].file
        if gname not in want:
            raise ConversionError(f"{where}: vision tensor {hf_name!r} has no place in the {projector} mmproj "
                                  "(unexpected for this configuration)")
        got = st.shape(hf_name)
        if math.prod(got) != math.prod(want[gname]) or \
                tuple(x for x in got if x != 1) != tuple(x for x in want[gname] if x != 1):
            raise ConversionError(f"{where}: tensor {hf_name!r} has shape {list(got)}, expected {list(want[gname])}")
        if gname in sources:
            raise ConversionError(f"{where}: tensors {sources[gname]!r} and {hf_name!r} both map to {gname!r}")
        sources[gname] = hf_name
    missing = sorted(set(want) - set(sources))
    if missing:
        raise ConversionError(f"{hf_dir}: vision tensors missing for {missing[:4]} (expected {expected})")
    return sources


def random_tower(shapes: dict[str, dict[str, Any]], tower: str | dict, default: str, qtype: str) -> tuple[dict, str]:
    """(vision_config, name) of a random tower: a key of ``shapes`` or a dict of fields over
    ``shapes[default]``; ValueError for an unknown tower or weight type."""
    if qtype not in OUTTYPES:
        raise ValueError(f"qtype {qtype!r} is not supported (expected one of {sorted(OUTTYPES)})")
    if isinstance(tower, str):
        if tower not in shapes:
            raise ValueError(f"unknown tower {tower!r} (expected one of {sorted(shapes)} or a dict)")
        return dict(shapes[tower]), tower
    return dict(shapes[default], **tower), "custom"


def write_mmproj_file(out_path: Path, source: Path | str, outtype: str, write_keys: Callable[[Any], None],
                      plan: Sequence[tuple[str, tuple[int, ...], Any]], arrays: Iterable[np.ndarray]) -> Path:
    """An mmproj GGUF as llama.cpp's converter lays it out: ``general.architecture = clip``,
    ``general.type = mmproj``, the model card of the checkpoint folder ``source`` (or the name
    ``source``), the file type of ``outtype``, the family's keys (``write_keys(writer)``), then the
    tensors of ``plan`` ((name, numpy shape, GGML type), in order) with the float data ``arrays``,
    written atomically (see :func:`write_gguf_atomically`)."""
    gguf = _gguf()
    writer = gguf.GGUFWriter(path=None, arch="clip")
    writer.add_type(gguf.GGUFType.MMPROJ)
    if isinstance(source, Path):
        meta = gguf.Metadata.load(None, source, None, sum(math.prod(s) for _, s, _ in plan))
        if meta.name is None:
            meta.name = source.name
        meta.set_gguf_meta_model(writer)
    else:
        writer.add_name(source)
    writer.add_file_type(int(gguf.LlamaFileType[OUTTYPES[outtype][1]]))
    write_keys(writer)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tensor_infos(writer, plan)
    write_gguf_atomically(writer, Path(out_path), ((np.asarray(a, dtype=np.float32).reshape(shape), qtype)
                                                   for (_, shape, qtype), a in zip(plan, arrays)))
    return Path(out_path)


def write_gguf_atomically(writer: Any, out_path: Path, tensors: Iterable[tuple[np.ndarray, Any]]) -> None:
    """Write ``writer``'s header, metadata and tensor infos, then each ``(float data, ggml type)``
    as llama.cpp stores it (F32 as is, F16 cast, quantized types through gguf-py), in the order
    the infos were added. The file goes to a hidden sibling (same file system, normal
    permissions) renamed at the end, so a failure leaves nothing behind."""
    gguf = _gguf()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data, qtype in tensors:
            if qtype == gguf.GGMLQuantizationType.F32:
                out = np.ascontiguousarray(data, dtype=np.float32)
            else:
                out = gguf.quants.quantize(np.asarray(data, dtype=np.float32), qtype)
            writer.write_tensor_data(out)
        writer.close()
        os.replace(tmp, out_path)
    except BaseException:
        try:
            writer.close()
        except Exception:
            pass
        tmp.unlink(missing_ok=True)
        raise
