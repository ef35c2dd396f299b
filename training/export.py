"""Export a trained oracle directory for shipping: bf16 adapter weights, no machine paths.

A run directory records the resolved config, which names the data folders it read. A shipped
oracle must not carry this machine's paths, so every absolute path under ``data_root`` becomes
``$AO_DATA_DIR/...``. LoRA weights are stored in bf16 (half the size; ``load_oracle`` casts them
back to the adapter's dtype when attaching).

>>> import json
>>> _scrub(json.dumps({"p": "/data/x/classification"}), "/data/x")
'{"p": "$AO_DATA_DIR/classification"}'
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import AdapterError, OutputDirError

FILES = ("adapter_model.safetensors", "adapter_config.json", "oracle_config.json")


def _scrub(text: str, data_root: str | None) -> str:
    if data_root:
        root = str(Path(data_root).resolve()).rstrip("/")
        text = text.replace(root, "$AO_DATA_DIR")
    return text


def export_oracle(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str], *, data_root: str | None = None,
                  max_mb: float = 25.0, overwrite: bool = False) -> Path:
    """Copy the oracle in ``run_dir`` to ``dest`` with bf16 weights and scrubbed paths; return ``dest``."""
    import torch
    from safetensors.torch import load_file, save_file

    run, out = Path(run_dir), Path(dest)
    missing = [f for f in FILES if not (run / f).is_file()]
    if missing:
        raise AdapterError(f"{str(run)!r} lacks {missing}; expected a finished `ao train` output directory.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputDirError(f"{str(out)!r} is not empty; pass overwrite=True to replace it.")
    tensors = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous()
               for k, v in load_file(str(run / "adapter_model.safetensors")).items()}
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent if out.parent.exists() else None))
    try:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        size_mb = (tmp / "adapter_model.safetensors").stat().st_size / 2**20
        if size_mb > max_mb:
            raise AdapterError(f"the exported adapter is {size_mb:.1f} MB, over the {max_mb} MB limit; train with a "
                               "smaller LoRA rank or fewer target modules.")
        base_name = json.loads((run / "oracle_config.json").read_text()).get("base_model", "")
        for name in ("adapter_config.json", "oracle_config.json"):
            data = json.loads(_scrub((run / name).read_text(), data_root))
            if name == "adapter_config.json" and base_name:
                # PEFT records where the base was loaded from (a cache folder); name the model instead.
                data["base_model_name_or_path"] = base_name
            (tmp / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
