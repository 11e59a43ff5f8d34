"""Copying a GGUF file with gguf-py while changing part of it (tests only): metadata keys left
out, tensors passed through a function."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import numpy as np


def rewrite_gguf(src: str, dst, drop_keys: Iterable[str] = (),
                 tensor: Optional[Callable[[object], np.ndarray]] = None) -> str:
    """``src`` to ``dst`` without ``drop_keys``; ``tensor(reader_tensor)`` gives each tensor's data
    (default: as stored), reshaped to the tensor's shape."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    drop = {"general.architecture", *drop_keys}
    r = GGUFReader(src)
    w = GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key in drop:
            continue
        if field.types[0] == GGUFValueType.ARRAY:
            w.add_key_value(key, field.contents(), field.types[0], sub_type=field.types[-1])
        else:
            w.add_key_value(key, field.contents(), field.types[0])
    for t in r.tensors:
        data = np.asarray(t.data) if tensor is None else tensor(t)
        w.add_tensor(t.name, data.reshape([int(x) for x in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(dst)
